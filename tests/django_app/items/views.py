"""Views for the backend test's ATOMIC_REQUESTS checks (tests/django_app/test_backend.py)."""

import json

from django.db import connection
from django.http import HttpResponse

from .models import Item

# The server's port, and whether it is a standby (a PostgreSQL standby, a
# read-only MySQL server), by vendor.
SERVER_SQL = {
    "postgresql": "SELECT inet_server_port(), pg_is_in_recovery()",
    "mysql": "SELECT @@port, @@global.read_only",
}


def server(c):
    c.execute(SERVER_SQL[connection.vendor])
    port, standby = c.fetchone()
    return port, bool(standby)


def create(request):
    """Creates Item(seq); with ?fail=1 raises after it, so the request's
    transaction rolls back. Answers the port of the server it wrote to."""
    Item.objects.create(seq=int(request.GET["seq"]))
    with connection.cursor() as c:
        port, _ = server(c)
    if request.GET.get("fail"):
        raise RuntimeError("the view fails after writing")
    return HttpResponse(str(port))


def read(request):
    """Only reads (under ATOMIC_REQUESTS, in a transaction on the write alias):
    the seqs at or above ?from=, the server's port and whether it is a standby,
    and what ReadOnlyMiddleware set."""
    seqs = sorted(Item.objects.filter(seq__gte=int(request.GET.get("from", 0)))
                  .values_list("seq", flat=True))
    with connection.cursor() as c:
        port, standby = server(c)
    return HttpResponse(json.dumps({"seqs": seqs, "port": port, "standby": standby,
                                    "read_only": getattr(request, "dbha_read_only", None)}),
                        content_type="application/json")
