"""Availability zones and where each instance type of the stage is offered.

Zone names (``us-east-1a``) map to different physical zones in each account;
zone IDs (``use1-az1``) do not. The stage config may use either, all of one
kind: the checks resolve them against the account.
"""

from __future__ import annotations

from typing import Collection, Iterable, Mapping, Sequence

from delivery.preflight import Result, failed, passed, warned


def account_zones(ec2) -> list[dict]:
    """The region's availability zones (AZ type only), as EC2 reports them."""
    zones = ec2.describe_availability_zones(
        Filters=[{"Name": "zone-type", "Values": ["availability-zone"]}])["AvailabilityZones"]
    return sorted(zones, key=lambda z: z["ZoneName"])


def check_zones(zones: Sequence[str], available: Iterable[Mapping], *, region: str,
                refused: Collection[str] = ()) -> list[Result]:
    """Every configured zone (name or ID) exists and is available, and is not
    one of the ``refused`` zone IDs (where the stage's EKS cluster cannot go)."""
    available = list(available)
    by_key = {}
    for zone in available:
        by_key[zone["ZoneName"]] = zone
        by_key[zone["ZoneId"]] = zone
    listing = ", ".join(f"{z['ZoneName']}={z['ZoneId']}" for z in available if z["ZoneId"] not in refused)
    rows: list[Result] = []
    for zone in zones:
        name = f"zone {zone}"
        info = by_key.get(zone)
        if info is None:
            rows.append(failed(name, f"no zone {zone} in {region} for this account",
                               f"pick zones from: {listing}"))
        elif info.get("State", "available") != "available":
            rows.append(failed(name, f"{info['ZoneName']} ({info['ZoneId']}) is {info['State']}",
                               f"pick another zone from: {listing}"))
        elif info["ZoneId"] in refused:
            rows.append(failed(name, f"{zone} is {info['ZoneId']} in this account, where EKS creates no "
                                     "cluster (UnsupportedAvailabilityZoneException)",
                               f"pick another zone in network.availability_zones from: {listing}"))
        else:
            other = info["ZoneId"] if zone == info["ZoneName"] else info["ZoneName"]
            rows.append(passed(name, f"{zone} is {other} in this account, available"))
    return rows


def offerings(ec2, instance_types: Sequence[str], zones: Sequence[str], *,
              by_id: bool) -> dict[str, set[str]]:
    """Instance type -> the configured zones (in the config's spelling: IDs
    when ``by_id``, else names) where EC2 offers it."""
    location_type = "availability-zone-id" if by_id else "availability-zone"
    offered: dict[str, set[str]] = {t: set() for t in instance_types}
    paginator = ec2.get_paginator("describe_instance_type_offerings")
    pages = paginator.paginate(LocationType=location_type, Filters=[
        {"Name": "instance-type", "Values": list(instance_types)},
        {"Name": "location", "Values": list(zones)},
    ])
    for page in pages:
        for offering in page["InstanceTypeOfferings"]:
            offered.setdefault(offering["InstanceType"], set()).add(offering["Location"])
    return offered


def check_offerings(groups: Mapping[str, Sequence[str]], offered: Mapping[str, set[str]],
                    zones: Sequence[str], *, every_zone: Collection[str] = ()) -> list[Result]:
    """One row per group of instance types (training fleet, each node group).

    FAIL when a type is offered in none of the zones (the group could never
    use it) or, for a group of one type or a group in ``every_zone``, not in
    every zone; WARN when a type misses some zones (its capacity there comes
    from the group's other types). ``every_zone``: the EKS managed node
    groups, which EKS refuses to create when any of their instance types is
    not offered in any zone of their subnets (InvalidRequestException "Your
    requested instance type ... is not supported in your requested
    Availability Zone"); an Auto Scaling group of our own skips such a zone.
    """
    rows: list[Result] = []
    for group, types in groups.items():
        missing = {t: [z for z in zones if z not in offered.get(t, set())] for t in types}
        name = f"offered {group}"
        nowhere = [t for t, gaps in missing.items() if len(gaps) == len(zones)]
        partial = {t: gaps for t, gaps in missing.items() if gaps and t not in nowhere}
        figure = "; ".join(f"{t} in {len(zones) - len(missing[t])}/{len(zones)} zones" for t in types)
        if nowhere or ((len(types) == 1 or group in every_zone) and partial):
            bad = nowhere or list(partial)
            rows.append(failed(name, figure,
                               f"{', '.join(bad)} not offered in {', '.join(missing[bad[0]])}: pick "
                               "other zones (network.availability_zones) or other instance types"))
        elif partial:
            empty = [z for z in zones if all(z in gaps for gaps in missing.values())]
            rows.append(warned(name, figure, "; ".join(
                f"{t} missing in {', '.join(g)}" for t, g in partial.items())
                + (f": no type of the group in {', '.join(empty)}, it runs in the other zones only"
                   if empty else ": the group runs on its other types there")))
        else:
            rows.append(passed(name, figure))
    return rows
