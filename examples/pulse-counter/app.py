"""A Pulse counter whose count lives in the server process (a Pulse State per render session).

The page shows the count, the label this version was deployed with (COUNTER_LABEL, from [env])
and the process serving it. It knows nothing of flotilla: with `framework = "pulse"` flotilla
routes on Pulse's own affinity names.
"""

import os

import pulse as ps


class Counter(ps.State):
    count: int = 0

    def increment(self):
        self.count += 1


@ps.component
def counter():
    with ps.init():
        state = Counter()
    return ps.div(
        ps.button("Increment", onClick=state.increment),
        ps.p(f"count: {state.count}"),
        ps.p(f"label: {os.environ.get('COUNTER_LABEL', 'unset')}"),
        ps.p(f"process: {os.getpid()}"),
        # Whether the secret arrived, never its value.
        ps.p(f"token: {'set' if os.environ.get('COUNTER_TOKEN') else 'missing'}"),
    )


app = ps.App(routes=[ps.Route("/", counter)])
