"""`python manage.py run_projections [--once]`: the projection sidecar. It follows the events
of Django's database and keeps the read models current until SIGTERM or Ctrl-C (a batch is
committed whole or not at all), or with `--once` catches up and exits."""

from django.core.management.base import BaseCommand

import projectionist as pj
from shop.projections import PROJECTIONS, store


class Command(BaseCommand):
    help = "Run the projections (the sidecar): follow the events and keep the read models current."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="catch up to the head, then exit")

    def handle(self, *args, once: bool = False, **options):
        engine = pj.Engine(store(), PROJECTIONS)
        reports = engine.catch_up() if once else engine.run()
        for r in reports:
            self.stdout.write(f"{r['projection']}: {r['events']} events, checkpoint {r['checkpoint']}")
