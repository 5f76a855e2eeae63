"""What a deployment of ``head`` would do to the resources of ``base``.

A resource is *replaced* when its type changes or when a property that the
CloudFormation resource schema lists under ``createOnlyProperties`` changes
(cfn-lint ships the schemas of every region, so this needs no network), or
when such a property references a resource that is itself replaced (its
physical ID changes). The replacement rules come from the schemas, never
from a hand-kept list of properties.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator, Mapping

ADDED, MODIFIED, REPLACED, REMOVED = "added", "modified", "replaced", "removed"
ACTIONS = (ADDED, MODIFIED, REPLACED, REMOVED)

# Resource attributes whose change is an update of the resource. Metadata
# (aws:cdk:path, cfn-lint/nag annotations) and DependsOn change nothing that
# is deployed.
_COMPARED_ATTRIBUTES = ("Properties", "DeletionPolicy", "UpdateReplacePolicy",
                        "UpdatePolicy", "CreationPolicy", "Condition")
_MISSING = object()


@dataclass(frozen=True)
class ResourceChange:
    stage: str
    stack: str
    logical_id: str
    resource_type: str
    action: str  # one of ACTIONS
    reason: str = ""

    @property
    def address(self) -> str:
        """``<stage>/<stack>/<logical id>``: what the allow mechanism names."""
        return f"{self.stage}/{self.stack}/{self.logical_id}"


@lru_cache(maxsize=None)
def create_only_paths(resource_type: str, region: str = "us-east-1") -> tuple[tuple[str, ...], ...]:
    """The ``createOnlyProperties`` of a type as path segments, e.g.
    ``("BucketName",)`` or ``("KeySchema", "*", "AttributeName")``.

    Empty for types without a published schema (custom resources).
    """
    from cfnlint.schema import PROVIDER_SCHEMA_MANAGER
    from cfnlint.schema.manager import ResourceNotFoundError

    try:
        schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema(region, resource_type)
    except ResourceNotFoundError:
        return ()
    paths = []
    for pointer in schema.schema.get("createOnlyProperties", []):
        parts = pointer.split("/")
        if parts[:2] == ["", "properties"] and len(parts) > 2:
            paths.append(tuple(parts[2:]))
    return tuple(paths)


def _values_at(value: Any, path: tuple[str, ...]) -> Iterator[Any]:
    """Every value at ``path`` (``*`` expands list items); ``_MISSING`` where absent."""
    if not path:
        yield value
        return
    head, rest = path[0], path[1:]
    if head == "*":
        if isinstance(value, list):
            for item in value:
                yield from _values_at(item, rest)
        else:
            yield _MISSING if value is _MISSING else value
        return
    if isinstance(value, Mapping):
        yield from _values_at(value.get(head, _MISSING), rest)
    else:
        yield _MISSING


def _referenced_ids(value: Any) -> set[str]:
    """Logical IDs a property value refers to with ``Ref``/``Fn::GetAtt``/``Fn::Sub``."""
    found: set[str] = set()
    if isinstance(value, Mapping):
        for key, inner in value.items():
            if key == "Ref" and isinstance(inner, str):
                found.add(inner)
            elif key == "Fn::GetAtt":
                target = inner[0] if isinstance(inner, list) else str(inner).split(".")[0]
                found.add(target)
            else:
                found |= _referenced_ids(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= _referenced_ids(inner)
    return found


def _changed_create_only(resource_type: str, old_props: Mapping, new_props: Mapping,
                         region: str) -> list[str]:
    changed = []
    for path in create_only_paths(resource_type, region):
        if list(_values_at(old_props, path)) != list(_values_at(new_props, path)):
            changed.append("/".join(path))
    return changed


def compare_templates(stage: str, stack: str, base: Mapping | None, head: Mapping | None,
                      *, region: str = "us-east-1") -> list[ResourceChange]:
    """The changes a deployment of ``head`` makes to a stack deployed from ``base``.

    ``base`` None: a new stack (everything added); ``head`` None: a deleted
    stack (everything removed).
    """
    old = (base or {}).get("Resources", {})
    new = (head or {}).get("Resources", {})
    changes: dict[str, ResourceChange] = {}

    def record(logical_id: str, resource_type: str, action: str, reason: str = "") -> None:
        changes[logical_id] = ResourceChange(stage, stack, logical_id, resource_type, action, reason)

    for logical_id, resource in old.items():
        if logical_id not in new:
            record(logical_id, resource["Type"], REMOVED, "not in the new template")
    for logical_id, resource in new.items():
        if logical_id not in old:
            record(logical_id, resource["Type"], ADDED)
            continue
        before = old[logical_id]
        if before["Type"] != resource["Type"]:
            record(logical_id, resource["Type"], REPLACED,
                   f"type {before['Type']} -> {resource['Type']}")
            continue
        create_only = _changed_create_only(resource["Type"], before.get("Properties", {}),
                                           resource.get("Properties", {}), region)
        if create_only:
            record(logical_id, resource["Type"], REPLACED,
                   "create-only " + ", ".join(create_only) + " changed")
        elif any(before.get(a, _MISSING) != resource.get(a, _MISSING) for a in _COMPARED_ATTRIBUTES):
            record(logical_id, resource["Type"], MODIFIED)

    # A replaced resource gets a new physical ID: whatever holds it in a
    # create-only property is replaced too. Repeat until nothing changes.
    propagating = True
    while propagating:
        propagating = False
        replaced = {lid for lid, c in changes.items() if c.action == REPLACED}
        for logical_id, resource in new.items():
            existing = changes.get(logical_id)
            if logical_id not in old or (existing is not None and existing.action == REPLACED):
                continue
            props = resource.get("Properties", {})
            for path in create_only_paths(resource["Type"], region):
                hits = set()
                for value in _values_at(props, path):
                    if value is not _MISSING:
                        hits |= _referenced_ids(value) & replaced
                if hits:
                    record(logical_id, resource["Type"], REPLACED,
                           f"create-only {'/'.join(path)} refers to replaced {', '.join(sorted(hits))}")
                    propagating = True
                    break
    return sorted(changes.values(), key=lambda c: (ACTIONS.index(c.action), c.logical_id))


def compare_assemblies(base: Mapping[tuple[str, str], Mapping],
                       head: Mapping[tuple[str, str], Mapping],
                       *, region_of: Mapping[str, str] | None = None) -> list[ResourceChange]:
    """Changes of every stack of every stage; stacks only on one side count
    as wholly added or removed."""
    changes: list[ResourceChange] = []
    keys = list(head) + [k for k in base if k not in head]
    for stage, stack in keys:
        region = (region_of or {}).get(stage, "us-east-1")
        changes.extend(compare_templates(stage, stack, base.get((stage, stack)),
                                         head.get((stage, stack)), region=region))
    return changes


def count_actions(changes: list[ResourceChange]) -> dict[str, int]:
    counts = dict.fromkeys(ACTIONS, 0)
    for change in changes:
        counts[change.action] += 1
    return counts
