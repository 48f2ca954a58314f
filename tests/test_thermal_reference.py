"""The dlib ResNet-29 port on the registered thermal sets matches the shared README's reference AUCs.

Reference (no adaptation, all same/different pairs): thermal UND 0.82, PUJ-T360 0.96. Measured with
the centred crop of the registered images (the embedded benchmark's thermal chips).
"""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from afr.align import center_crop_face
from afr.data.images import read_image
from afr.data.sources import list_thermal_puj, list_thermal_und
from afr.eval.extract import extract_embeddings
from afr.models import create_backbone


@pytest.mark.parametrize("lister, reference", [(list_thermal_und, 0.82), (list_thermal_puj, 0.96)])
def test_all_pairs_auc_is_near_the_reference(lister, reference):
    faces = lister()
    chips = [center_crop_face(read_image(face.path), 150) for face in faces]
    embeddings = extract_embeddings(create_backbone("dlib-resnet29"), chips, flip=False)
    identities = np.array([face.identity for face in faces])
    first, second = np.triu_indices(len(faces), 1)
    distances = np.sum((embeddings[first] - embeddings[second]) ** 2, axis=1)
    auc = roc_auc_score(identities[first] == identities[second], -distances)
    assert auc == pytest.approx(reference, abs=0.02)
