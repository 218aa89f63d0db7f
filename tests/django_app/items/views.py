"""Views for the backend test's ATOMIC_REQUESTS checks (tests/django_app/test_backend.py)."""

from django.db import connection
from django.http import HttpResponse

from .models import Item


def create(request):
    """Creates Item(seq); with ?fail=1 raises after it, so the request's
    transaction rolls back. Answers the port of the server it wrote to."""
    Item.objects.create(seq=int(request.GET["seq"]))
    with connection.cursor() as c:
        c.execute("SELECT inet_server_port()")
        port = c.fetchone()[0]
    if request.GET.get("fail"):
        raise RuntimeError("the view fails after writing")
    return HttpResponse(str(port))
