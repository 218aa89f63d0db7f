from django.http import HttpResponse

from .models import Item


def write(request):
    """One write and one read, inside the request's transaction (ATOMIC_REQUESTS):
    a 200 acknowledges that `seq` was committed."""
    seq = int(request.GET["seq"])
    Item.objects.create(seq=seq)
    latest = Item.objects.filter(seq__lte=seq).order_by("-seq").values_list("seq", flat=True).first()
    return HttpResponse(f"{seq} {latest}\n", content_type="text/plain")


def read(request):
    """Only reads, inside the request's transaction (ATOMIC_REQUESTS): the ten
    latest items at or below `seq`."""
    seq = int(request.GET["seq"])
    latest = list(Item.objects.filter(seq__lte=seq).order_by("-seq").values_list("seq", flat=True)[:10])
    return HttpResponse(f"{seq} {len(latest)}\n", content_type="text/plain")
