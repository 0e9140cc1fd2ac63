"""Cost accounting shared by the schedule search and the evaluation harness: MACs of the denoising loop."""

from .macs import MacProfile, MacReport, denoiser_macs, macs, profile_macs

__all__ = ["MacProfile", "MacReport", "denoiser_macs", "macs", "profile_macs"]
