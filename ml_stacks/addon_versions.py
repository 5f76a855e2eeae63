"""EKS add-on versions known to exist, per Kubernetes version, with their source.

The one place the repository records which add-on builds exist. Every pin
in ``AddonVersions`` (config) must be listed here for its cluster version
(``tests/unit/test_addon_versions.py``), and ``make preflight`` verifies
every pin against ``DescribeAddonVersions`` before a deploy: that API is
the authority, this list is what was checked when the pin was chosen.

Two kinds of evidence, named in each entry:

- ``docs``: the add-on's version table in the Amazon EKS User Guide (the
  "latest version of the Amazon EKS add-on type for each Kubernetes
  version" tables on managing-kube-proxy, managing-coredns,
  managing-vpc-cni); the table revision is the URL's.
- ``observed``: no table lists the build for that Kubernetes version (the
  Pod Identity agent has no table; the VPC CNI table revision found stops
  at 1.33), so the entry records where the build was seen used with that
  cluster version. Preflight's DescribeAddonVersions check is what makes
  these safe to deploy.

EKS cannot downgrade an add-on: a pin only ever moves forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

KUBE_PROXY_DOCS = "https://docs.aws.amazon.com/eks/latest/userguide/managing-kube-proxy.html"
KUBE_PROXY_DOCS_CN = "https://docs.amazonaws.cn/zh_cn/eks/latest/userguide/managing-kube-proxy.md"
COREDNS_DOCS = "https://docs.aws.amazon.com/eks/latest/userguide/managing-coredns.html"
COREDNS_DOCS_CN = "https://docs.amazonaws.cn/en_us/eks/latest/userguide/managing-coredns.md"
VPC_CNI_DOCS = "https://docs.aws.amazon.com/ja_jp/eks/latest/userguide/managing-vpc-cni.html"


@dataclass(frozen=True)
class KnownVersion:
    version: str
    evidence: str  # "docs" or "observed"
    source: str


def _docs(version: str, source: str) -> KnownVersion:
    return KnownVersion(version, "docs", source)


def _observed(version: str, source: str) -> KnownVersion:
    return KnownVersion(version, "observed", source)


# (Kubernetes version, add-on name) -> builds known to exist for it.
KNOWN_ADDON_VERSIONS: Mapping[tuple[str, str], tuple[KnownVersion, ...]] = {
    ("1.33", "kube-proxy"): (_docs("v1.33.5-eksbuild.2", KUBE_PROXY_DOCS),
                             _docs("v1.33.10-eksbuild.2", KUBE_PROXY_DOCS_CN)),
    ("1.34", "kube-proxy"): (_docs("v1.34.1-eksbuild.2", KUBE_PROXY_DOCS),
                             _docs("v1.34.6-eksbuild.2", KUBE_PROXY_DOCS_CN)),
    ("1.35", "kube-proxy"): (_docs("v1.35.3-eksbuild.2", KUBE_PROXY_DOCS_CN),),
    ("1.33", "coredns"): (_docs("v1.12.4-eksbuild.1", COREDNS_DOCS),),
    ("1.34", "coredns"): (_docs("v1.12.4-eksbuild.1", COREDNS_DOCS),
                          _docs("v1.13.2-eksbuild.7", COREDNS_DOCS_CN)),
    ("1.35", "coredns"): (_docs("v1.14.2-eksbuild.4", COREDNS_DOCS_CN),),
    ("1.33", "vpc-cni"): (_docs("v1.20.1-eksbuild.3", VPC_CNI_DOCS),),
    ("1.34", "vpc-cni"): (_observed(
        "v1.20.4-eksbuild.1",
        "pinned for Kubernetes 1.34 clusters in public configurations citing managing-vpc-cni; "
        "the table lists one build for every Kubernetes version (1.27-1.33: v1.20.1-eksbuild.3)"),),
    ("1.33", "eks-pod-identity-agent"): (_observed(
        "v1.3.8-eksbuild.2", "awslabs/cdk-eks-blueprints add-on version map for 1.28-1.33"),),
    ("1.34", "eks-pod-identity-agent"): (_observed(
        "v1.3.10-eksbuild.1", "pinned for a Kubernetes 1.34 cluster in a public "
                              "terraform-aws-modules/eks configuration (no docs table exists)"),),
    # No docs table lists node monitoring agent builds per Kubernetes version.
    ("1.34", "eks-node-monitoring-agent"): (_observed(
        "v1.4.2-eksbuild.1", "pinned next to kube-proxy v1.34.1-eksbuild.2 for the Kubernetes 1.34 "
                             "test and production clusters of a public Terraform environment "
                             "configuration (UK Ministry of Justice analytical platform)"),),
}


def known_versions(kubernetes_version: str, addon_name: str) -> tuple[str, ...]:
    """The builds of ``addon_name`` recorded for ``kubernetes_version``."""
    return tuple(k.version for k in KNOWN_ADDON_VERSIONS.get((kubernetes_version, addon_name), ()))
