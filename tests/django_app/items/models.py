from django.db import models


class Item(models.Model):
    """One acknowledged write of the test's loop."""

    seq = models.IntegerField(unique=True)
