"""Names of the InsightFace verification packs of the full profile and the hint for packs of another embedded build
(torch-free: the settings, the paper and the checks of committed records read it)."""
from __future__ import annotations

__all__ = ["FULL_BENCHMARKS", "OTHER_BUILD_HINT"]

#: the five InsightFace packs (``<name>.bin`` in ``bins_dir``), in the order they are reported
FULL_BENCHMARKS = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")

#: what to do when a record's pack SHA-256 differ from the packs at hand (torch-free: the checks of committed
#: records quote it). The committed embedded benchmark is rebuilt byte for byte from the shared images with
#: opencv-python-headless 5.0.0 (pinned in requirements.txt: ``cv2.warpAffine`` of 5.1 moves some chip pixels by 1)
#: and MTCNN on its fixed thread count (``afr.align.mtcnn.DETECTION_THREADS``); thermal packs take no warp and match
#: whatever the version.
OTHER_BUILD_HINT = (
    "the packs come from another build of the embedded benchmark (not a regression of the method): rebuild it with "
    "`python -m afr build-embedded --rebuild` in the venv of requirements.txt (opencv-python-headless 5.0.0; other "
    "OpenCV versions warp other chip pixels) to get the committed packs, or restore the committed records with "
    "`git checkout -- results/`; README, 'Embedded benchmark', says what differs between builds"
)
