"""`python manage.py place_order ORDER-ID CUSTOMER [ITEM QUANTITY PRICE]...`: the write side of
the example, appending an order's events (what the app's views would do)."""

from django.core.management.base import BaseCommand

from shop.projections import store


class Command(BaseCommand):
    help = "Append an order's events: OrderCreated, then one ItemAdded per ITEM QUANTITY PRICE."

    def add_arguments(self, parser):
        parser.add_argument("order_id")
        parser.add_argument("customer")
        parser.add_argument("items", nargs="*", help="ITEM QUANTITY PRICE, repeated")

    def handle(self, *args, order_id: str, customer: str, items: list, **options):
        if len(items) % 3:
            raise SystemExit("items come in threes: ITEM QUANTITY PRICE")
        events = [("OrderCreated", {"order_id": order_id, "customer_name": customer})]
        for i in range(0, len(items), 3):
            name, qty, price = items[i], int(items[i + 1]), float(items[i + 2])
            events.append(("ItemAdded", {"order_id": order_id, "item_name": name, "quantity": qty, "unit_price": price}))
        token = store().append(order_id, events, expected_version=0)
        self.stdout.write(f"{order_id}: {len(events)} events appended (token {token})")
