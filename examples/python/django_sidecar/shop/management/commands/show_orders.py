"""`python manage.py show_orders`: the read model through the Django ORM."""

from django.core.management.base import BaseCommand

from shop.models import OrderSummary


class Command(BaseCommand):
    help = "Print the order summaries, read through the Django ORM."

    def handle(self, *args, **options):
        for order in OrderSummary.objects.order_by("order_id"):
            self.stdout.write(str(order))
