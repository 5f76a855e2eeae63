"""A freshly created AWS account for preflight: moto for the APIs it
implements, answers validated against the botocore models (like ``Stubber``,
but keyed by operation instead of call order) for the ones it does not:
Service Quotas, EKS ``DescribeAddonVersions``/``ListClusters``, Lambda
``GetAccountSettings``, Cost Explorer, SageMaker ``DescribeInferenceComponent``.

Used by tests/delivery/test_preflight_cli.py and bench/preflight.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import boto3
from botocore.awsrequest import AWSResponse
from botocore.validate import validate_parameters

from ml_stacks.addon_versions import KNOWN_ADDON_VERSIONS, known_versions

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
# Services with operations moto 5.2 does not implement that preflight calls,
# and EC2 DescribeImages: moto does not know the public AMIs the pins name.
ANSWERED = ("service-quotas", "eks", "lambda", "ce", "sagemaker", "ec2")


# Quota codes seen in Service Quotas listings; others get a made-up code.
SAGEMAKER_CODES = {"ml.g5.xlarge for endpoint usage": "L-1928E07B"}


class Missing(Exception):
    """Raised by an answer to reply with an AWS error code."""

    def __init__(self, code: str, status: int = 400) -> None:
        super().__init__(code)
        self.code, self.status = code, status


def answer(client, answers: Mapping[str, Callable[[dict], dict]], calls: list[str]) -> None:
    """Make ``client`` reply to each operation from ``answers`` (by operation
    name); parameters and replies are validated against the service model.
    Every call is appended to ``calls`` as ``service:Operation``."""
    service = client.meta.service_model
    pending: list[dict] = []

    def remember(model=None, params=None, **_):
        # The caller's parameters, before serialization (as Stubber checks them).
        if model.input_shape is not None:
            validate_parameters(params, model.input_shape)
        pending.append(dict(params))

    def respond(model=None, **_):
        params = pending.pop()
        if model.name not in answers:
            return None  # moto answers it
        calls.append(f"{service.service_name}:{model.name}")
        try:
            reply = answers[model.name](params)
        except Missing as error:
            return (AWSResponse(None, error.status, {}, None),
                    {"Error": {"Code": error.code, "Message": error.code},
                     "ResponseMetadata": {"HTTPStatusCode": error.status}})
        validate_parameters(reply, model.output_shape)
        return AWSResponse(None, 200, {}, None), {**reply, "ResponseMetadata": {"HTTPStatusCode": 200}}

    event = service.service_id.hyphenize()
    client.meta.events.register_first(f"before-parameter-build.{event}.*", remember)
    # First, so the reply short-circuits the request (and moto) entirely.
    client.meta.events.register_first(f"before-call.{event}.*", respond)


@dataclass
class FreshAccount:
    """What a new account answers. Quota values by code (EC2/EKS/Lambda) and
    by name (SageMaker endpoint usage); the defaults are documented in
    bench/preflight.py."""

    quotas: dict[str, float] = field(default_factory=dict)
    sagemaker_quotas: dict[str, float] = field(default_factory=dict)
    lambda_limit: int = 10
    lambda_unreserved: int = 10
    addon_versions: dict[str, list[str]] = field(default_factory=dict)
    # Kubernetes version -> (end of standard support, end of extended support), as
    # DescribeClusterVersions answers; a version left out is not offered.
    cluster_versions: dict[str, tuple[dt.datetime, dt.datetime]] = field(default_factory=dict)
    clusters: list[str] = field(default_factory=list)
    tag_status: str | None = None  # None: the tag was never seen by Cost Explorer
    # Public AMIs the account can see: {"ImageId", "Name", "State"[, "DeprecationTime"]}.
    images: list[dict] = field(default_factory=list)
    # Answered operations the credentials may not call (AccessDeniedException).
    denied: set[str] = field(default_factory=set)


def pinned_images(region: str = REGION) -> list[dict]:
    """The public AMIs ``ml_stacks/ami_pins.json`` names for ``region``, as
    EC2 describes them (every pinned release of every AMI type)."""
    from delivery.preflight.pins import eks_ami_name
    from ml_stacks import pins

    training = pins.training_ami(region)
    images = [{"ImageId": training.ami_id, "Name": training.name, "State": "available"}]
    releases = pins.load_pins()["eks_release_versions"].get(region, {})
    for number, (kubernetes_version, by_type) in enumerate(
            (k, t) for k, types in releases.items() for t in types.items()):
        ami_type, pin = by_type
        images.append({"ImageId": f"ami-0e{number:015x}", "State": "available",
                       "Name": eks_ami_name(kubernetes_version, ami_type, pin["release_version"])})
    return images


def _day(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)


# End of standard support, end of extended support (EKS User Guide, Kubernetes
# versions: release calendar).
EKS_RELEASE_CALENDAR = {
    "1.33": (_day("2026-07-29"), _day("2027-07-29")),
    "1.34": (_day("2026-12-02"), _day("2027-12-02")),
    "1.35": (_day("2027-03-27"), _day("2028-03-27")),
}


def new_account() -> FreshAccount:
    """What a new account answers where moto has nothing. AWS sets these per
    account and region, so a real new account may differ:

    - EC2 vCPUs: G and VT / P, on-demand and spot, 0 (the GPU quotas of
      accounts created in 2026); Standard 32.
    - SageMaker endpoint usage: 0 for GPU instance types, 2 for ml.m5.large.
    - CloudFormation: 2,000 stacks (L-0485CB21); SageMaker: 200 instances
      across active endpoints (L-7A3DF611), as Service Quotas lists them.
    - EKS: 100 clusters, 30 managed node groups per cluster, 450 nodes per
      group (the EKS defaults), no cluster yet.
    - Lambda: concurrency limit 10, all unreserved (new accounts: 10 to 50).
    - Add-on versions for Kubernetes 1.34: the builds ml_stacks/addon_versions.py
      records as existing (EKS User Guide tables and observed pins).
    - Kubernetes versions: 1.33, 1.34 and 1.35 with their end of standard and
      extended support (the EKS User Guide's release calendar).
    - Public AMIs: the ones ml_stacks/ami_pins.json pins, available.
    - Cost Explorer has never seen the Environment tag.
    """
    return FreshAccount(
        quotas={"L-DB2E81BA": 0, "L-3819A6DF": 0, "L-417A185B": 0, "L-7212CCBC": 0,
                "L-1216C47A": 32, "L-34B43A08": 32,
                "L-1194D53C": 100, "L-6D54EA21": 30, "L-BD136A63": 450,
                "L-0485CB21": 2000, "L-7A3DF611": 200},
        sagemaker_quotas={"ml.m5.large for endpoint usage": 2, "ml.g5.xlarge for endpoint usage": 0,
                          "ml.g6.xlarge for endpoint usage": 0},
        lambda_limit=10, lambda_unreserved=10,
        addon_versions={name: list(known_versions("1.34", name))
                        for version, name in KNOWN_ADDON_VERSIONS if version == "1.34"},
        cluster_versions=dict(EKS_RELEASE_CALENDAR),
        images=pinned_images(),
    )



def _quota(code: str, name: str, value: float, service: str) -> dict:
    return {"ServiceCode": service, "QuotaCode": code, "QuotaName": name, "Value": value}


def _answers(account: FreshAccount, service: str) -> dict[str, Callable[[dict], dict]]:
    if service == "service-quotas":
        def get(params):
            if params["QuotaCode"] not in account.quotas:
                raise Missing("NoSuchResourceException")
            return {"Quota": _quota(params["QuotaCode"], "", account.quotas[params["QuotaCode"]],
                                    params["ServiceCode"])}

        def listing(params):
            values = account.sagemaker_quotas if params["ServiceCode"] == "sagemaker" else {}
            return {"Quotas": [_quota(SAGEMAKER_CODES.get(n, f"L-{i:08X}"), n, v, params["ServiceCode"])
                               for i, (n, v) in enumerate(values.items())]}
        return {"GetServiceQuota": get, "GetAWSDefaultServiceQuota": get,
                "ListServiceQuotas": lambda p: {"Quotas": []},
                "ListAWSDefaultServiceQuotas": listing}
    if service == "eks":
        return {
            "ListClusters": lambda p: {"clusters": list(account.clusters)},
            "DescribeClusterVersions": lambda p: {"clusterVersions": [
                {"clusterVersion": v, "endOfStandardSupportDate": standard, "endOfExtendedSupportDate": extended,
                 "versionStatus": "STANDARD_SUPPORT"}
                for v, (standard, extended) in account.cluster_versions.items()
                if v in p.get("clusterVersions", [v])]},
            "DescribeAddonVersions": lambda p: {"addons": [{
                "addonName": p["addonName"],
                "addonVersions": [{"addonVersion": v, "compatibilities": [
                    {"clusterVersion": p["kubernetesVersion"]}]}
                    for v in account.addon_versions.get(p["addonName"], [])]}]},
        }
    if service == "lambda":
        return {"GetAccountSettings": lambda p: {"AccountLimit": {
            "ConcurrentExecutions": account.lambda_limit,
            "UnreservedConcurrentExecutions": account.lambda_unreserved}}}
    if service == "ce":
        return {"ListCostAllocationTags": lambda p: {"CostAllocationTags": [
            {"TagKey": k, "Type": "UserDefined", "Status": account.tag_status}
            for k in p.get("TagKeys", []) if account.tag_status is not None]}}
    if service == "ec2":
        def describe_images(params):
            wanted = {f["Name"]: set(f["Values"]) for f in params.get("Filters", [])}
            keys = {"image-id": "ImageId", "name": "Name"}
            return {"Images": [i for i in account.images
                               if all(i[keys[k]] in v for k, v in wanted.items())]}
        return {"DescribeImages": describe_images}
    if service == "sagemaker":
        # An inference component that does not exist: SageMaker's ValidationException.
        def no_component(params):
            raise Missing("ValidationException")
        return {"DescribeInferenceComponent": no_component}
    raise KeyError(service)


def _deny(params: dict) -> dict:
    raise Missing("AccessDeniedException")


@contextlib.contextmanager
def fresh_account(account: FreshAccount, *, region: str = REGION) -> Iterator[tuple[Callable, list[str]]]:
    """(client factory, every operation called) inside ``moto.mock_aws``."""
    from moto import mock_aws

    calls: list[str] = []
    with mock_aws():
        session = boto3.Session(region_name=region, **CREDENTIALS)
        session.events.register("before-call.*.*", lambda model=None, **_: calls.append(
            f"{model.service_model.service_name}:{model.name}"))
        clients: dict[str, object] = {}

        def client(service: str, in_region: str | None = None):
            key = f"{service}@{in_region or region}"
            if key not in clients:
                clients[key] = session.client(service, region_name=in_region or region)
                if service in ANSWERED:
                    answers = _answers(account, service)
                    for operation in account.denied & set(answers):
                        answers[operation] = _deny
                    answer(clients[key], answers, calls)
            return clients[key]
        yield client, calls
