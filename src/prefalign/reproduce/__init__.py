"""`prefalign reproduce NAME`: a paper's claim rerun on a CPU testbed, with a report and a verdict."""

from prefalign.reproduce.claims import CLAIMS, ClaimResult, Verdict, claim, run_claim

__all__ = ["CLAIMS", "ClaimResult", "Verdict", "claim", "run_claim"]
