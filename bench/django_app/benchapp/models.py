from django.db import models


class Item(models.Model):
    """One write of the benchmark's load: `seq` is unique per request."""

    seq = models.BigIntegerField(unique=True)
