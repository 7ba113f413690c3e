"""A child process of the process tests.

    child.py catch_up URL    project the counters to the head, then exit
    child.py run URL         follow the log until SIGTERM / SIGINT, then print the reports
    child.py append URL N    append N ticks, one per append, printing each token
"""

import json
import os
import sys

import projectionist as pj
from strict import counters


def main():
    mode, url = sys.argv[1], sys.argv[2]
    store = pj.Store.open(url)
    if mode == "append":
        for i in range(int(sys.argv[3])):
            token = store.append(f"W{i % 3}", [("Tick", {"i": i})])
            print(str(token), flush=True)
        return
    delay = float(os.environ.get("CHILD_HANDLER_DELAY", "0"))
    engine = pj.Engine(store, [counters(delay=delay)])
    print("started", flush=True)
    if mode == "catch_up":
        engine.catch_up()
    elif mode == "run":
        reports = engine.run()
        print(json.dumps(reports), flush=True)


if __name__ == "__main__":
    main()
