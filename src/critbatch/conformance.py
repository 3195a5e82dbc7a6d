"""Whether a trainer speaks the trial protocol: the checks of `critbatch check-trainer`.

Pure: `critbatch.commands.check_trainer` runs the trainer once as a tiny trial and records what
it saw (`Observed`); `evaluate` judges that record part by part, with the same rules the local
runner and the operator apply to a real trial's result (`critbatch.protocol.result_problem`),
so a trainer that passes here is read there. Optional parts (the metrics endpoint, the fields
Proposition 3.4 needs) can only warn.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from critbatch import protocol
from critbatch.protocol import TrialSettings, result_problem, short_json
from critbatch.vocabulary import Goal, TrialKey

TERMINATION_LIMIT = 4000  # bytes of a result file that a cluster's termination message keeps
SIGTERM_EXIT = 128 + signal.SIGTERM
# The series a reader needs of a trial (`critbatch.metrics` field names); `value` may come
# from critbatch_trainer_target_value or critbatch_trainer_fid.
METRIC_SERIES = {"step": "critbatch_trainer_step", "finished": "critbatch_trainer_finished"}


class Status(StrEnum):
    """How one part of the protocol fared; `missing` and `broken` fail the check."""

    ok = "ok"
    missing = "missing"
    broken = "broken"
    warning = "warning"


FAILING = frozenset({Status.missing, Status.broken})


@dataclass(frozen=True)
class Check:
    """One part of the protocol, how the trainer did on it, and what was seen."""

    part: str
    status: Status
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"part": self.part, "status": self.status.value, "detail": self.detail}


@dataclass(frozen=True, kw_only=True)
class Observed:
    """What one run of a trainer showed, as plain data.

    `exit_code` is the process's return code (negative: killed by that signal), None when it
    never ended and was killed after `seconds`. `sigterm_after` is the --sigterm-after asked
    for, `sigterm_sent` when it was sent (seconds after the start; None: the trainer ended
    first). `metrics_seen` holds the `critbatch.metrics.TrialMetrics` fields seen for this
    trial on any page read, `metrics_trials` every trial a page had series of.
    """

    exit_code: int | None
    seconds: float
    result_file: bytes | None = None
    last_line: str | None = None
    stderr_tail: str = ""
    sigterm_after: float | None = None
    sigterm_sent: float | None = None
    metrics_pages: int = 0
    metrics_seen: frozenset[str] = frozenset()
    metrics_trials: frozenset[TrialKey] = frozenset()
    metrics_invalid: str | None = None
    checkpoint_files: int = 0


def passed(checks: Collection[Check]) -> bool:
    """True when no part is missing or broken (warnings pass)."""
    return not any(c.status in FAILING for c in checks)


def evaluate(settings: TrialSettings, seen: Observed) -> list[Check]:
    """Every part of the protocol that `seen` shows, in the order a reader meets them."""
    checks = [_exit_code(seen)]
    if seen.exit_code is None:
        return checks + _metrics(settings, seen)
    if seen.sigterm_sent is not None:
        return checks + _after_sigterm(seen) + _metrics(settings, seen)
    if seen.sigterm_after is not None:
        checks.append(Check("SIGTERM", Status.warning,
                            f"the trial ended after {seen.seconds:.1f} s, before "
                            f"--sigterm-after {seen.sigterm_after:g}: not tested"))
    file_check, file_result = _result_file(seen.result_file)
    line_check, line_result = _last_line(seen.last_line, file_result)
    checks += [file_check, line_check]
    result = file_result if file_result is not None else line_result
    if result is not None:
        checks += [_identity(settings, result), _budget(settings, result),
                   _target(settings, result), _estimate_fields(result)]
    return checks + _metrics(settings, seen)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _exit_code(seen: Observed) -> Check:
    part = "exit code"
    tail = f": {seen.stderr_tail}" if seen.stderr_tail else ""
    code = seen.exit_code
    if code is None:
        after = (f", {seen.seconds - seen.sigterm_sent:.0f} s after SIGTERM"
                 if seen.sigterm_sent is not None else "")
        return Check(part, Status.broken, f"never finished: killed after {seen.seconds:.0f} s "
                                          f"(--timeout){after}")
    if seen.sigterm_sent is not None:
        if code == SIGTERM_EXIT:
            return Check(part, Status.ok, f"{SIGTERM_EXIT} after SIGTERM")
        if code == -signal.SIGTERM:
            return Check(part, Status.broken, "killed by SIGTERM: no handler, so no checkpoint "
                                              f"(expected exit {SIGTERM_EXIT})")
        return Check(part, Status.broken,
                     f"{_exit_text(code)} after SIGTERM, expected {SIGTERM_EXIT}{tail}")
    if code == 0:
        return Check(part, Status.ok, f"0 after {seen.seconds:.1f} s")
    meaning = {1: " (a crash)", 2: " (bad configuration)"}.get(code, "")
    return Check(part, Status.broken, f"{_exit_text(code)}{meaning}, expected 0{tail}")


def _parse(text: str) -> tuple[Any, str | None]:
    """(the JSON value, None), or (None, why it is not JSON)."""
    try:
        return json.loads(text), None
    except RecursionError:
        return None, "nested too deeply"
    except ValueError as e:
        return None, f"not JSON ({e}): {short_json(text)}"


def _result_file(data: bytes | None) -> tuple[Check, dict[str, Any] | None]:
    part = "result file"
    if data is None or not data.strip():
        return Check(part, Status.missing,
                     f"nothing written to {protocol.RESULT_FILE}"), None
    if len(data) > TERMINATION_LIMIT:
        return Check(part, Status.broken, f"{len(data)} bytes: a cluster's termination message "
                                          f"keeps {TERMINATION_LIMIT}"), None
    try:
        text = data.decode().strip()
    except UnicodeDecodeError:
        return Check(part, Status.broken, "not UTF-8 text"), None
    if "\n" in text:
        return Check(part, Status.broken, f"{text.count(chr(10)) + 1} lines: the result is one "
                                          "line of JSON"), None
    value, why = _parse(text)
    problem = why or result_problem(value)
    if problem is not None:
        return Check(part, Status.broken, problem), None
    return Check(part, Status.ok, _summary(value)), value


def _last_line(line: str | None, file_result: dict[str, Any] | None,
               ) -> tuple[Check, dict[str, Any] | None]:
    part = "stdout last line"
    if line is None:
        return Check(part, Status.missing, "nothing on stdout: the result is its last line"), None
    value, why = _parse(line)
    if why is not None and not line.startswith("{"):  # a log line: the result line is absent
        return Check(part, Status.missing, f"a log line, not the result: {short_json(line)}"), None
    problem = why or result_problem(value)
    if problem is not None:
        return Check(part, Status.broken, problem), None
    if file_result is not None and value != file_result:
        return Check(part, Status.broken, "a result other than the result file's"), value
    same = "the result file's" if file_result is not None else "(the result file has none)"
    return Check(part, Status.ok, f"{_summary(value)}, {same}"), value


def _summary(result: dict[str, Any]) -> str:
    return f"reached {short_json(result['reached'])}, steps {short_json(result['steps'])}"


def _identity(settings: TrialSettings, result: dict[str, Any]) -> Check:
    part = "batch size, seed, sweep"
    problem = result_problem(result, settings.key, sweep=settings.sweep)
    if problem is not None:
        return Check(part, Status.broken, problem)
    return Check(part, Status.ok, f"batch size {settings.batch_size}, seed {settings.seed}"
                                  + (", sweep" if "sweep" in result else "") + " echoed")


def _budget(settings: TrialSettings, result: dict[str, Any]) -> Check:
    part = "steps within the budget"
    problem = result_problem(result, max_steps=settings.max_steps)
    if problem is not None:
        return Check(part, Status.broken, f"{problem} ({protocol.MAX_STEPS})")
    return Check(part, Status.ok, f"steps {short_json(result['steps'])} <= "
                                  f"{settings.max_steps}")


def _target(settings: TrialSettings, result: dict[str, Any]) -> Check:
    part = "target"
    told = {"metric": (settings.metric, protocol.TARGET_METRIC),
            "goal": (settings.goal.value, protocol.TARGET_GOAL),
            "threshold": (settings.threshold, protocol.TARGET_THRESHOLD)}
    for key, (want, variable) in told.items():
        if key in result and result[key] is not None and result[key] != want:
            return Check(part, Status.broken, f"{key} {short_json(result[key])}, but "
                                              f"{variable} is {short_json(want)}")
    value = protocol.result_value(result)
    if value is None:
        return Check(part, Status.warning, "no finite value: `reached` not checked against the "
                                           "threshold")
    side = "<=" if settings.goal is Goal.minimize else ">="
    meets = settings.reached(value)
    text = (f"{settings.metric} {value:g} {'' if meets else 'not '}{side} "
            f"{settings.threshold:g}")
    if meets != result["reached"]:
        return Check(part, Status.broken, f"reached {short_json(result['reached'])}, but "
                                          f"{text}")
    return Check(part, Status.ok, f"reached {short_json(result['reached'])}: {text}")


def _estimate_fields(result: dict[str, Any]) -> Check:
    part = "fields for Proposition 3.4"
    missing = []
    if protocol.result_params(result) is None:
        missing.append("params")
    if protocol.result_dataset_size(result) is None:
        missing.append("dataset_size")
    optimizer = protocol.result_optimizer(result)
    if isinstance(optimizer, str):
        missing.append(optimizer if result.get("optimizer") is not None else "optimizer")
    if missing:
        return Check(part, Status.warning, f"without {', '.join(missing)}: estimates for other "
                                           "optimizers need them (optional)")
    return Check(part, Status.ok, "params, dataset_size, optimizer")


def _after_sigterm(seen: Observed) -> list[Check]:
    checkpoint = (Check("checkpoint on SIGTERM", Status.ok,
                        f"{seen.checkpoint_files} file(s) in {protocol.CHECKPOINT_DIR}")
                  if seen.checkpoint_files else
                  Check("checkpoint on SIGTERM", Status.missing,
                        f"nothing written to {protocol.CHECKPOINT_DIR}"))
    wrote = []
    if seen.result_file and seen.result_file.strip():
        wrote.append("the result file")
    if seen.last_line is not None and isinstance(_parse(seen.last_line)[0], dict):
        wrote.append("a JSON line on stdout")
    quiet = (Check("no result after SIGTERM", Status.broken,
                   f"{' and '.join(wrote)}: a stopped trial has no result, it resumes")
             if wrote else Check("no result after SIGTERM", Status.ok, "none written"))
    return [checkpoint, quiet]


def _metrics(settings: TrialSettings, seen: Observed) -> list[Check]:
    if not seen.metrics_pages:
        return [Check("metrics endpoint", Status.warning,
                      f"no page on {settings.metrics_host}:{settings.metrics_port}/metrics "
                      f"({protocol.METRICS_PORT}; optional, without it a sweep sees progress "
                      "only at the end)")]
    checks = [Check("metrics endpoint", Status.ok, f"{seen.metrics_pages} page(s) read")]
    part = "metrics series"
    if seen.metrics_invalid is not None:
        checks.append(Check(part, Status.warning, f"refused: {seen.metrics_invalid}"))
        return checks
    absent = [name for field, name in METRIC_SERIES.items() if field not in seen.metrics_seen]
    if absent:
        others = sorted(seen.metrics_trials - {settings.key})
        labels = (f"; series were labeled for {', '.join(k.name for k in others[:3])}"
                  if others else "")
        checks.append(Check(part, Status.warning,
                            f"no {', '.join(absent)} with batch_size=\"{settings.batch_size}\", "
                            f"seed=\"{settings.seed}\"{labels} (optional)"))
    else:
        shown = ", ".join(sorted(seen.metrics_seen))
        checks.append(Check(part, Status.ok, f"seen: {shown}"))
    return checks
