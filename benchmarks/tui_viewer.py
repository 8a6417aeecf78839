"""The viewer process of benchmarks/latency.py when it measures the real TUI: `symwatch.tui`'s
SymwatchApp, headless, on a `BackgroundFeed` (its own thread and SUB socket), as `symwatch
attach` runs it, with three probes that change nothing it does:

- `Subscriber.poll` is wrapped to stamp when each message was decoded (feed thread);
- `RunState.fold_steps` is wrapped to note each message once it is folded whole (app
  thread);
- the app's `_display` (Textual calls it with each composed screen update; headless, it would
  write nothing) renders the update to terminal bytes, as a terminal would get them, and stamps
  every message folded since the last frame: that frame is when the message was on screen.

In 'scale' mode it also presses keys (↓ ↑ [ ] L, one every 0.5 s, while the stream runs) and
stamps the first frame after the key's binding ran: input-to-redraw latency. And it samples
its own CPU time and RSS every second. Results go back over the pipe in the format of
latency.viewer, plus `keys` (key, milliseconds).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

KEYS = (("down", None), ("down", None), ("up", None), ("left_square_bracket", "["),
        ("right_square_bracket", "]"), ("L", "L"))
KEY_EVERY_S = 0.5
SIZE = (160, 50)


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def prefill(state: Any, layers: list[str], indicators: tuple[str, ...], steps: int) -> None:
    """A long run simulated before the stream starts: `steps` samples of every series (a
    random walk), folded straight into the series (messages would only add decoding time)."""
    import random

    from symwatch.state.run_state import Series

    rng = random.Random(7)
    series = []
    for name in layers:
        layer = state._layer(name)
        for ind in indicators:
            state._note_indicator(ind)
            layer.indicators[ind] = Series(state.history, 1 + len(series))  # as RunState does
            series.append(layer.indicators[ind])
    value = [rng.uniform(1.0, 60.0) for _ in series]
    for step in range(1, steps + 1):
        for i, s in enumerate(series):
            value[i] *= 1.0 + 0.01 * (rng.random() - 0.5)
            s.add(step, value[i])
    for name in layers:
        state.layers[name].updates = steps
    state.step = steps


def tui_viewer(endpoint: str, conn: Any, duration: float, mode: str,
               simulated: tuple[list[str], tuple[str, ...], int] | None = None) -> None:
    """Runs in its own process (multiprocessing 'spawn'): see the module docstring.
    `simulated`: (layer names, indicators, steps) of a run to fold in before the stream."""
    from textual import events

    from symwatch.core import protocol
    from symwatch.transport.subscriber import BackgroundFeed, Subscriber
    from symwatch.tui.app import SymwatchApp

    decoded_at: dict[tuple[str, int, int], float] = {}
    original_poll = Subscriber.poll

    def stamped_poll(self: Subscriber, timeout_ms: int = 0) -> list[Any]:
        batch = original_poll(self, timeout_ms)
        now = time.time()
        for msg in batch:
            decoded_at[(msg.run, msg.rank, msg.seq)] = now
        return batch

    Subscriber.poll = stamped_poll  # type: ignore[method-assign]

    records: list[tuple[str, int, int, float, float, float]] = []
    keys: list[tuple[str, float]] = []
    folded: list[Any] = []
    probe: dict[str, Any] = {"key": None, "posted": 0.0, "handled": False, "done": False}

    import symwatch.tui.app as app_module

    class MeasuredApp(SymwatchApp):
        # a subclass's relative CSS_PATH would be looked up next to this file
        CSS_PATH = os.path.join(os.path.dirname(app_module.__file__), "app.tcss")

        def _display(self, screen: Any, renderable: Any) -> None:
            super()._display(screen, renderable)
            if renderable is None:
                return
            renderable.render_segments(self.console)  # the bytes a terminal would get
            now = time.time()
            for msg in folded:
                t_dec = decoded_at.pop((msg.run, msg.rank, msg.seq), now)
                if mode == "latency":
                    records.append((msg.kind, msg.step, msg.seq, msg.time, t_dec, now))
                if msg.kind == protocol.GOODBYE:
                    probe["done"] = True
            folded.clear()
            if probe["handled"]:
                keys.append((probe["key"], 1000 * (now - probe["posted"])))
                probe["key"], probe["handled"] = None, False

        async def _check_bindings(self, key: str, priority: bool = False) -> bool:
            handled = await super()._check_bindings(key, priority)
            if handled and probe["key"] == key:
                probe["handled"] = True
                self.screen.refresh()  # a key whose binding changed nothing still gets a frame
            return handled

    feed = BackgroundFeed(endpoint, history=False)
    app = MeasuredApp(feed, owns_source=True)
    fold_steps = app.state.fold_steps

    def noted_fold_steps(msg: Any, now: float | None = None) -> Any:
        yield from fold_steps(msg, now)  # the app folds large messages a slice at a time
        folded.append(msg)

    app.state.fold_steps = noted_fold_steps  # type: ignore[method-assign]
    if simulated is not None:
        prefill(app.state, *simulated)
    samples: list[tuple[float, float, int]] = []
    result: dict[str, Any] = {}

    async def drive(pilot: Any) -> None:
        conn.send("ready")
        t0 = time.time()
        cpu0 = time.process_time()
        next_sample = t0
        next_key = t0 + 2.0
        k = 0
        deadline = t0 + duration
        while time.time() < deadline and not probe["done"]:
            await asyncio.sleep(0.05)
            now = time.time()
            if mode == "scale" and now >= next_sample:
                samples.append((now - t0, time.process_time() - cpu0, _rss_bytes()))
                next_sample += 1.0
            if mode == "scale" and now >= next_key and probe["key"] is None:
                key, char = KEYS[k % len(KEYS)]
                k += 1
                event = events.Key(key, char)  # as a terminal's key arrives (Pilot does too)
                event.set_sender(app)
                probe["key"], probe["posted"], probe["handled"] = key, time.time(), False
                app._driver.send_message(event)
                next_key = now + KEY_EVERY_S
            if conn.poll() and conn.recv() == "stop":
                break
        result.update(cpu_s=time.process_time() - cpu0, wall_s=time.time() - t0)
        app.exit()

    app.run(headless=True, size=SIZE, auto_pilot=drive)
    state = app.state
    conn.send({"records": records, "samples": samples, "keys": keys,
               "decoded": state.messages, "first": None, "last": None,
               "cpu_s": result.get("cpu_s", 0.0), "wall_s": result.get("wall_s", 1.0),
               "gap_dropped": state.gap_dropped, "garbage": feed.garbage,
               "overflow": feed.overflow, "layers": len(state.layers),
               "tick_errors": app.tick_errors, "last_tick_error": app.last_tick_error})
