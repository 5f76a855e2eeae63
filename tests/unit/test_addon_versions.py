"""Every EKS add-on pin is a build recorded as existing for its cluster version."""

from __future__ import annotations

import pytest

from ml_stacks.addon_versions import KNOWN_ADDON_VERSIONS, known_versions
from ml_stacks.config import AddonVersions, EksConfig, default_configs


@pytest.mark.parametrize("stage", ["dev", "staging", "prod"])
def test_every_stage_pins_addon_builds_that_exist_for_its_cluster_version(stage) -> None:
    eks = default_configs()[stage].eks
    for name, version in eks.addons.as_dict().items():
        assert version in known_versions(eks.kubernetes_version, name), (name, version)


def test_the_default_pins_exist_for_the_default_cluster_version() -> None:
    kubernetes_version = EksConfig().kubernetes_version
    for name, version in AddonVersions().as_dict().items():
        assert version in known_versions(kubernetes_version, name), (name, version)


def test_the_kube_proxy_build_the_docs_never_listed_is_not_known() -> None:
    assert "v1.34.0-eksbuild.5" not in known_versions("1.34", "kube-proxy")


def test_every_known_version_names_its_evidence_and_source() -> None:
    for (kubernetes_version, name), versions in KNOWN_ADDON_VERSIONS.items():
        for known in versions:
            assert known.evidence in ("docs", "observed")
            assert known.source
            if name == "kube-proxy":
                # kube-proxy is built per Kubernetes minor version.
                assert known.version.startswith(f"v{kubernetes_version}.")
            if known.evidence == "docs":
                assert known.source.startswith("https://docs.")
