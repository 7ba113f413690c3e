"""The read model, as Django sees it: a table the projection owns (`managed = False`: Django's
migrations never touch it; the projection's `setup` creates it and its `reset` empties it for a
rebuild)."""

from django.db import models


class OrderSummary(models.Model):
    order_id = models.TextField(primary_key=True)
    customer_name = models.TextField()
    status = models.TextField()
    item_count = models.IntegerField()
    total_amount = models.FloatField()
    version = models.IntegerField()

    class Meta:
        managed = False
        db_table = "order_summary"

    def __str__(self) -> str:
        return f"{self.order_id} {self.status} {self.item_count} items {self.total_amount:.2f}"
