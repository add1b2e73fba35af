"""The runner layer: one step attempt (or compensation) at a time, turned into transitions
(core/transitions.py), one guarded write, trace events and the next action."""

from .steps import StepRunner, first_unfinished, resume_point

__all__ = ["StepRunner", "first_unfinished", "resume_point"]
