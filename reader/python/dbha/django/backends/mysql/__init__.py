"""A Django database backend for MySQL and MariaDB whose connection follows the
dbha agent: see :mod:`dbha.django.backends.mysql.base`."""
