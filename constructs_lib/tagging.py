"""Cost-allocation tags on every taggable resource."""

from __future__ import annotations

from typing import Mapping

import aws_cdk as cdk
import jsii
from constructs import IConstruct

# Types that CloudFormation tags with a list of {Key, Value} but that CDK
# creates as plain CfnResources without a TagManager (the Lambda function and
# role behind CDK's own custom-resource providers, e.g. S3 auto-delete and
# default security group restriction). cdk.Tags does not reach them.
_RAW_LIST_TAGGED_TYPES = frozenset({"AWS::IAM::Role", "AWS::Lambda::Function"})
# The same for types tagged with a {key: value} map: aws_eks_v2's
# KubectlReadyBarrier is a raw AWS::SSM::Parameter.
_RAW_MAP_TAGGED_TYPES = frozenset({"AWS::SSM::Parameter"})


@jsii.implements(cdk.IAspect)
class _RawResourceTags:
    def __init__(self, tags: Mapping[str, str]) -> None:
        self._tags = [{"Key": k, "Value": v} for k, v in sorted(tags.items())]
        self._tag_map = dict(sorted(tags.items()))

    def visit(self, node: IConstruct) -> None:
        if not isinstance(node, cdk.CfnResource) or cdk.TagManager.is_taggable(node):
            return
        if node.cfn_resource_type in _RAW_LIST_TAGGED_TYPES:
            node.add_property_override("Tags", self._tags)
        elif node.cfn_resource_type in _RAW_MAP_TAGGED_TYPES:
            node.add_property_override("Tags", self._tag_map)


def apply_tags(scope: IConstruct, tags: Mapping[str, str]) -> None:
    """Tag every taggable resource under ``scope`` with ``tags``.

    ``cdk.Tags`` (itself an aspect) covers every L1 with a TagManager; the
    second aspect covers CDK-internal raw resources it cannot reach.
    """
    for key, value in tags.items():
        cdk.Tags.of(scope).add(key, value)
    cdk.Aspects.of(scope).add(_RawResourceTags(tags))
