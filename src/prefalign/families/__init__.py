"""Model families: what a kind of model must provide so that every registered objective, the one
training loop, checkpoints, exact resume and metrics serve it unchanged (see families/base.py)."""

from prefalign.families.base import FAMILIES, FamilyTrainee, ModelFamily, family, get_family

__all__ = ["FAMILIES", "FamilyTrainee", "ModelFamily", "family", "get_family"]
