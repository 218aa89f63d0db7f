"""Run by Django's test runner against the dbha backend (tests/django_app/
test_backend.py starts it): the test database is created on the endpoint the
agent chose, and the usual idioms work inside Django's TestCase."""

from django.db import connection, transaction
from django.test import TestCase, TransactionTestCase

from .models import Item


class BackendUnderTheTestRunner(TestCase):
    # Reads go to the read alias (ReplicaRouter); under the runner it mirrors default.
    databases = {"default", "replica"}

    def test_orm_atomic_and_raw_sql(self):
        Item.objects.create(seq=1)
        with transaction.atomic():
            Item.objects.select_for_update().get(seq=1)
        with connection.cursor() as c:
            c.execute("SELECT current_database(), pg_is_in_recovery()")
            self.assertEqual(c.fetchone(), ("test_postgres", False))


class CommitsUnderTheTestRunner(TransactionTestCase):
    databases = {"default", "replica"}

    def test_a_rolled_back_block_leaves_nothing(self):
        with self.assertRaises(ZeroDivisionError), transaction.atomic():
            Item.objects.create(seq=2)
            1 / 0
        self.assertFalse(Item.objects.filter(seq=2).exists())
