"""The run hooks are called through pluggy's hook caller: third-party wrappers run, tryfirst /
trylast and firstresult behave as pluggy documents, and an implementation that raises is
reported by plugin name while the others (and the run) go on."""

from types import SimpleNamespace

import pluggy
import pytest

from hgbench import build_experiment, hookimpl, hookspecs, registry, testing
from hgbench.hookspecs import RunContext, hookspec


class Probe:
    """A firstresult hook, only in the test's own plugin manager (no built-in hook is one)."""

    @hookspec(firstresult=True)
    def pick(self, run, x):
        """The first non-None answer."""


def manager(*plugins):
    """A plugin manager with hgbench's hooks and ``Probe``'s, holding ``plugins`` (name, object)
    registered in that order: the run-hook machinery without the built-in recorders."""
    pm = pluggy.PluginManager("hgbench")
    pm.add_hookspecs(hookspecs)
    pm.add_hookspecs(Probe)
    for name, plugin in plugins:
        pm.register(plugin, name=name)
    pm.check_pending()
    return pm


def context():
    return RunContext(config=None, experiment=None, tags={})


def test_third_party_wrappers_run_around_a_real_run():
    seen = {"new": [], "inner": [], "old": []}

    @hookimpl(wrapper=True)
    def on_hyper_step(run, step, metrics):
        results = yield
        seen["new"].append((step, metrics["val_loss"], list(results)))
        return results

    @hookimpl(hookwrapper=True)
    def on_run_end(run, status, summary):
        outcome = yield
        seen["old"].append((status, summary["hyper_steps_done"], outcome.get_result()))

    def inner(step):
        seen["inner"].append(step)
        return f"step {step}"

    wrapper = SimpleNamespace(on_hyper_step=on_hyper_step, on_run_end=on_run_end)
    plain = SimpleNamespace(on_hyper_step=hookimpl(inner))
    with testing.registered(wrapper, name="third_party_wrapper"), testing.registered(plain, name="plain"):
        result = build_experiment(overrides=["experiment=quick", "hyper_steps=2", "eval_every=1"]).run()
    assert result.status == "FINISHED" and result.plugin_errors == []
    # the new-style wrapper saw every step (0 = before the first hyper-step), the run's own
    # validation loss, and the plain implementation's result among the others
    assert [s for s, _, _ in seen["new"]] == [0, 1, 2] == seen["inner"]
    assert seen["new"][-1][1] == result.summary["val_loss"]
    assert all(f"step {s}" in results for s, _, results in seen["new"])
    # the old-style wrapper saw how the run ended, and pluggy's Result of the implementations
    assert [(status, steps) for status, steps, _ in seen["old"]] == [("FINISHED", 2)]
    assert isinstance(seen["old"][0][2], list)


def test_tryfirst_and_trylast_order_the_calls_and_a_failure_is_isolated():
    order = []

    def impl(label, **opts):
        def on_hyper_step(step):
            order.append(label)
            if label == "bad":
                raise RuntimeError("bug in bad")
            return label

        return SimpleNamespace(on_hyper_step=hookimpl(on_hyper_step, **opts))

    # registered first / last, so pluggy's default (last registered first) alone would call
    # "first" last and "last" first
    pm = manager(("first", impl("first", tryfirst=True)), ("a", impl("a")), ("bad", impl("bad")),
                 ("b", impl("b")), ("last", impl("last", trylast=True)))
    run = context()
    with pytest.warns(UserWarning, match=r"plugin 'bad' failed in on_hyper_step\(\): RuntimeError: bug in bad"):
        results = registry.SafeHooks(run, manager=pm).on_hyper_step(step=1, metrics={})
    assert order == ["first", "b", "bad", "a", "last"]
    assert results == ["first", "b", "a", "last"]  # the raising one counts as None, as pluggy drops None
    assert [(f.source, f.error) for f in run.plugin_errors] == [("bad", "on_hyper_step: RuntimeError: bug in bad")]
    assert run.recording_errors == []


def test_a_firstresult_hook_returns_the_first_non_none_result_past_a_failing_implementation():
    called = []

    def answer(label, value):
        def pick(x):
            called.append(label)
            if value == "raise":
                raise ValueError(f"{label} cannot")
            return value

        return SimpleNamespace(pick=hookimpl(pick))

    # called last registered first: none, broken, seven, never
    pm = manager(("never", answer("never", 9)), ("seven", answer("seven", 7)),
                 ("broken", answer("broken", "raise")), ("none", answer("none", None)))
    run = context()
    with pytest.warns(UserWarning, match="'broken' failed in pick"):
        assert registry.SafeHooks(run, manager=pm).pick(x=1) == 7
    assert called == ["none", "broken", "seven"]  # pluggy stops at the first non-None result
    assert [f.source for f in run.plugin_errors] == ["broken"]


def test_a_recorder_failure_is_reported_once_and_keyboard_interrupt_propagates():
    class Tracker:
        HGBENCH_RECORDER = True
        calls = 0

        @hookimpl
        def on_hyper_step(self, run, step):
            Tracker.calls += 1
            if step == 99:
                raise KeyboardInterrupt
            raise ConnectionError("tracker down")

    pm = manager(("tracker", Tracker()))
    run = context()
    hooks = registry.SafeHooks(run, manager=pm)
    with pytest.warns(UserWarning, match="'tracker' failed in on_hyper_step"):
        hooks.on_hyper_step(step=1, metrics={})
    hooks.on_hyper_step(step=2, metrics={})  # the same failure again: not reported again
    assert Tracker.calls == 2
    expected = [("tracker", "on_hyper_step: ConnectionError: tracker down")]
    assert [(f.source, f.error) for f in run.plugin_errors] == expected
    assert [(f.source, f.error) for f in run.recording_errors] == expected
    with pytest.raises(KeyboardInterrupt):
        hooks.on_hyper_step(step=99, metrics={})


def test_a_raising_wrapper_is_reported_by_name_and_the_implementations_ran():
    ran = []

    @hookimpl(wrapper=True)
    def on_run_end(run):
        yield
        raise OSError(28, "No space left on device")  # a full disk: also a recording failure

    pm = manager(("plain", SimpleNamespace(on_run_end=hookimpl(lambda status: ran.append(status)))),
                 ("disk_wrapper", SimpleNamespace(on_run_end=on_run_end)))
    run = context()
    with pytest.warns(UserWarning, match="'disk_wrapper' failed in on_run_end"):
        registry.SafeHooks(run, manager=pm).on_run_end(status="FINISHED", error=None, summary={})
    assert ran == ["FINISHED"]
    assert [f.source for f in run.plugin_errors] == [f.source for f in run.recording_errors] == ["disk_wrapper"]


def test_outside_safehooks_an_implementation_raises_as_pluggy_documents():
    def on_run_start(run):
        raise RuntimeError("plain pluggy")

    pm = manager(("raiser", SimpleNamespace(on_run_start=hookimpl(on_run_start))))
    with pytest.raises(RuntimeError, match="plain pluggy"):
        pm.hook.on_run_start(run=context())


def test_hook_call_monitoring_sees_the_calls_safehooks_makes():
    seen = []
    pm = manager(("a", SimpleNamespace(on_run_start=hookimpl(lambda run: None))),
                 ("b", SimpleNamespace(on_run_start=hookimpl(lambda run: 1 / 0))))
    undo = pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: seen.append(("before", name, [i.plugin_name for i in impls])),
        lambda outcome, name, impls, kwargs: seen.append(("after", name, outcome.exception)))
    run = context()
    try:
        with pytest.warns(UserWarning, match="'b' failed in on_run_start"):
            registry.SafeHooks(run, manager=pm).on_run_start()
    finally:
        undo()
    # one pluggy call with both implementations; the isolated failure is not the call's outcome
    assert seen == [("before", "on_run_start", ["a", "b"]), ("after", "on_run_start", None)]


def test_two_instances_of_one_plugin_class_are_told_apart():
    class Recorder:
        def __init__(self, broken):
            self.broken = broken

        @hookimpl
        def on_hyper_step(self, step):
            if self.broken:
                raise RuntimeError("this one is broken")
            return "ok"

        @hookimpl(wrapper=True)
        def on_run_end(self, status):
            yield
            if self.broken:
                raise RuntimeError("this wrapper is broken")

    # the broken one registered first and second, so neither position nor the shared function names it
    for order in (["two", "one"], ["one", "two"]):
        plugins = {"one": Recorder(broken=False), "two": Recorder(broken=True)}
        pm = manager(*[(n, plugins[n]) for n in order])
        run = context()
        hooks = registry.SafeHooks(run, manager=pm)
        with pytest.warns(UserWarning, match="'two' failed in on_hyper_step"):
            assert hooks.on_hyper_step(step=1, metrics={}) == ["ok"]
        with pytest.warns(UserWarning, match="'two' failed in on_run_end"):
            hooks.on_run_end(status="FINISHED", error=None, summary={})
        assert [f.source for f in run.plugin_errors] == ["two", "two"]
