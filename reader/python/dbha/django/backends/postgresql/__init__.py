"""A Django database backend whose connection follows the dbha agent: see
:mod:`dbha.django.backends.postgresql.base`."""
