"""When the guarded endpoint answers, abstains or answers with a flag, given a question's risk.

One sign convention throughout: ``risk`` (Rényi-2 entropy in nats, or the calibrated
probability of a wrong answer) is higher when the answer is more likely wrong; a rule fires
when the risk is *above* its threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from semdistill.scoring.risk_control import RiskControl
from semdistill.scoring.scorer import Scorer

Verdict = Literal["answered", "abstained", "flagged"]
ABSTAIN_MESSAGE = (
    "I am not confident enough to answer this question (the estimated risk of a wrong "
    "answer is above this service's threshold)."
)


@dataclass(frozen=True)
class Policy:
    """At most one abstention rule, and whether it only flags instead of abstaining.

    ``abstain_above``: calibrated probability of a wrong answer (needs a calibrated SSD);
    ``abstain_above_entropy``: risk entropy in nats; ``risk_control``: an entropy threshold
    chosen for a target error rate among answered questions (see :mod:`risk_control`).
    With ``flag_only`` the endpoint answers anyway and reports the verdict ``"flagged"``.

    Beside the risk rule, ``unfamiliar_below`` is a rule on the prompt's familiarity (see
    :mod:`~semdistill.scoring.familiarity`): below it the prompt is unlike the scorer's
    training prompts and its risk an extrapolation, and the endpoint takes
    ``unfamiliar_action`` (``"flag"`` or ``"abstain"``; ``flag_only`` turns it into a flag).
    """

    abstain_above: float | None = None
    abstain_above_entropy: float | None = None
    risk_control: RiskControl | None = None
    flag_only: bool = False
    abstain_message: str = ABSTAIN_MESSAGE
    unfamiliar_below: float | None = None
    unfamiliar_action: Literal["flag", "abstain"] = "flag"

    def __post_init__(self) -> None:
        rules = [
            name
            for name, value in (
                ("abstain_above", self.abstain_above),
                ("abstain_above_entropy", self.abstain_above_entropy),
                ("risk_control", self.risk_control),
            )
            if value is not None
        ]
        if len(rules) > 1:
            raise ValueError(f"choose one abstention rule, got {', '.join(rules)}")
        if self.abstain_above is not None and not 0 <= self.abstain_above <= 1:
            raise ValueError(f"abstain_above is a probability in [0, 1], got {self.abstain_above}")
        if self.unfamiliar_below is not None and not 0 < self.unfamiliar_below < 1:
            raise ValueError(
                f"unfamiliar_below is a familiarity in (0, 1), got {self.unfamiliar_below}"
            )
        if self.unfamiliar_action not in ("flag", "abstain"):
            raise ValueError(
                f"unfamiliar_action must be 'flag' or 'abstain', got {self.unfamiliar_action!r}"
            )
        if self.flag_only and not rules and self.unfamiliar_below is None:
            raise ValueError("flag_only needs an abstention rule to flag by")
        if not self.abstain_message.strip():
            raise ValueError("abstain_message must not be empty")

    def check(self, scorer: Scorer) -> None:
        """Raise a ValueError if ``scorer`` cannot evaluate this policy's rule."""
        if self.abstain_above is not None and scorer.calibration is None:
            raise ValueError(
                "abstain_above is a calibrated probability, but this SSD is not calibrated "
                f"(no calibration.json in {scorer.directory}); calibrate it, or use "
                "abstain_above_entropy or a target error"
            )
        if self.unfamiliar_below is not None and scorer.familiarity_model is None:
            raise ValueError(
                f"unfamiliar_below needs the familiarity model, but {scorer.directory} has no "
                "familiarity.json; retrain or update the scorer with this version"
            )

    @property
    def entropy_threshold(self) -> float | None:
        """The entropy above which the rule fires, if the rule is on the entropy."""
        if self.risk_control is not None:
            return self.risk_control.threshold
        return self.abstain_above_entropy

    def verdict(
        self, risk_entropy: float, risk_probability: float | None, familiarity: float | None = None
    ) -> Verdict:
        """``"answered"`` when no rule fires, else ``"abstained"`` if a firing rule abstains
        (and ``flag_only`` is off), else ``"flagged"``."""
        actions = {self._risk_action(risk_entropy, risk_probability)}
        if self.unfamiliar_below is not None:
            if familiarity is None:
                raise ValueError("unfamiliar_below needs the prompt's familiarity")
            if familiarity < self.unfamiliar_below:
                actions.add("flagged" if self.flag_only else self._unfamiliar_verdict)
        for verdict in ("abstained", "flagged"):
            if verdict in actions:
                return verdict
        return "answered"

    @property
    def _unfamiliar_verdict(self) -> Verdict:
        return "abstained" if self.unfamiliar_action == "abstain" else "flagged"

    def _risk_action(self, risk_entropy: float, risk_probability: float | None) -> Verdict:
        threshold = self.entropy_threshold
        if threshold is not None:
            fires = risk_entropy > threshold
        elif self.abstain_above is not None:
            if risk_probability is None:
                raise ValueError("abstain_above needs the calibrated probability")
            fires = risk_probability > self.abstain_above
        else:
            fires = False
        if not fires:
            return "answered"
        return "flagged" if self.flag_only else "abstained"

    def describe(self) -> dict[str, Any]:
        """The rule in words and numbers, as the endpoint reports it."""
        rule = None
        if self.abstain_above is not None:
            rule = f"risk_probability > {self.abstain_above:g}"
        elif self.abstain_above_entropy is not None:
            rule = f"risk_entropy > {self.abstain_above_entropy:g}"
        elif self.risk_control is not None:
            rule = (
                f"risk_entropy > {self.risk_control.threshold:.6g}"
                if self.risk_control.certified
                else "always (no threshold certified for the target error)"
            )
        return {
            "rule": rule,
            "action": ("flag" if self.flag_only else "abstain") if rule else None,
            "target_error": None if self.risk_control is None else self.risk_control.target_error,
            "guarantee": None if self.risk_control is None else self.risk_control.describe(),
            "unfamiliar_rule": (
                None
                if self.unfamiliar_below is None
                else f"familiarity < {self.unfamiliar_below:g}"
            ),
            "unfamiliar_action": (
                None
                if self.unfamiliar_below is None
                else ("flag" if self.flag_only else self.unfamiliar_action)
            ),
        }
