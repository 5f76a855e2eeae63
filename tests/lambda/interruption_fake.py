"""An in-memory account for the interruption handler's property tests.

EC2, SSM, Auto Scaling, DynamoDB and SQS as the handler calls them, fast
enough for thousands of examples, with faults the way the SDK raises them:
throttling and access denied (``ClientError`` with the service's real
code), connection errors, read timeouts (before or *after* the call took
effect) and 5xx. Every effect is recorded: commands sent, lifecycle actions
completed (a second completion answers "No active Lifecycle Action found",
as Auto Scaling does), messages copied to the dead-letter queue.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

GROUP = "ml-dev-training-gpu"
FLEET_TAG = "ml:training-fleet"
DOCUMENT = "ml-dev-training-Checkpoint"
DLQ_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/interruption-dlq"

MUTATING = frozenset({"SendCommand", "CompleteLifecycleAction", "SendMessage"})
THROTTLE_CODES = {"DescribeInstances": "RequestLimitExceeded", "CompleteLifecycleAction": "Throttling",
                  "PutItem": "ProvisionedThroughputExceededException", "GetItem": "ThrottlingException",
                  "SendMessage": "RequestThrottled"}
DENIED_CODES = {"DescribeInstances": "UnauthorizedOperation", "CompleteLifecycleAction": "AccessDenied",
                "SendMessage": "AccessDenied"}
# "-after-first": the first call succeeds, every later one fails (a save
# after SendCommand, while the claim before it went through).
FAULTS = ("throttle-once", "throttle-always", "access-denied", "connection-error",
          "read-timeout-after-once", "read-timeout-always", "server-error-once",
          "access-denied-after-first", "server-error-after-first")


def _client_error(code: str, status: int, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} (injected)"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


@dataclass
class FakeAws:
    fleet: set[str]
    online: set[str]
    faults: dict[str, str] = field(default_factory=dict)
    # capacity reservation id -> instances launched into it (any owner)
    reservations: dict[str, set[str]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    commands: list[dict] = field(default_factory=list)
    completed: list[dict] = field(default_factory=list)
    dead_letters: list[dict] = field(default_factory=list)
    visibility: dict[str, int] = field(default_factory=dict)  # receipt handle -> seconds
    items: dict[str, dict] = field(default_factory=dict)
    _seen: dict[str, int] = field(default_factory=dict)

    def _enter(self, operation: str) -> str | None:
        """Raise the fault due before the call; the fault due after it, if any."""
        self.calls.append(operation)
        count = self._seen[operation] = self._seen.get(operation, 0) + 1
        fault = self.faults.get(operation)
        if fault is None or (fault.endswith("-once") and count > 1) \
                or (fault.endswith("-after-first") and count == 1):
            return None
        if fault.startswith("throttle"):
            raise _client_error(THROTTLE_CODES.get(operation, "ThrottlingException"), 400, operation)
        if fault.startswith("access-denied"):
            raise _client_error(DENIED_CODES.get(operation, "AccessDeniedException"), 403, operation)
        if fault == "connection-error":
            raise EndpointConnectionError(endpoint_url="https://example.amazonaws.com")
        if fault.startswith("server-error"):
            raise _client_error("InternalError", 500, operation)
        return fault  # read timeouts: raised after the effect

    def _leave(self, fault: str | None) -> None:
        if fault is not None and fault.startswith("read-timeout"):
            raise ReadTimeoutError(endpoint_url="https://example.amazonaws.com")

    def heal(self) -> None:
        self.faults, self._seen = {}, {}

    # EC2
    def describe_instances(self, Filters, **_):  # noqa: N803 - boto3 names
        fault = self._enter("DescribeInstances")
        filters = {f["Name"]: f["Values"] for f in Filters}
        if "capacity-reservation-id" in filters:
            # The reservation lookup: EC2 applies the fleet tag filter itself.
            assert filters[f"tag:{FLEET_TAG}"] == [GROUP]
            assert filters["instance-state-name"] == ["pending", "running"]
            instances = [{"InstanceId": i, "CapacityReservationId": cr}
                         for cr in filters["capacity-reservation-id"]
                         for i in sorted(self.reservations.get(cr, ())) if i in self.fleet]
        else:
            instances = [{"InstanceId": i, "Tags": [{"Key": FLEET_TAG, "Value": GROUP}] if i in self.fleet
                          else [{"Key": "Name", "Value": "other"}]}
                         for i in filters["instance-id"] if i.startswith("i-0")]  # i-1...: no such instance
        response = {"Reservations": [{"Instances": instances}]}
        self._leave(fault)
        return response

    # SSM
    def describe_instance_information(self, Filters, MaxResults, **_):  # noqa: N803
        fault = self._enter("DescribeInstanceInformation")
        response = {"InstanceInformationList": [
            {"InstanceId": i, "PingStatus": "Online" if i in self.online else "ConnectionLost"}
            for i in Filters[0]["Values"]]}
        self._leave(fault)
        return response

    def send_command(self, **params):
        fault = self._enter("SendCommand")
        command = {"CommandId": str(uuid.uuid4()), **params}
        self.commands.append(command)
        self._leave(fault)
        return {"Command": command}

    def list_commands(self, InstanceId, **_):  # noqa: N803
        fault = self._enter("ListCommands")
        response = {"Commands": [c for c in self.commands if InstanceId in c["InstanceIds"]]}
        self._leave(fault)
        return response

    # Auto Scaling
    def complete_lifecycle_action(self, **params):
        fault = self._enter("CompleteLifecycleAction")
        key = params.get("LifecycleActionToken") or params["InstanceId"]
        if any((c.get("LifecycleActionToken") or c["InstanceId"]) == key for c in self.completed):
            raise ClientError({"Error": {"Code": "ValidationError",
                                         "Message": f"No active Lifecycle Action found with token {key}"},
                               "ResponseMetadata": {"HTTPStatusCode": 400}}, "CompleteLifecycleAction")
        self.completed.append(params)
        self._leave(fault)
        return {}

    # DynamoDB: the ledger's conditional write, evaluated like DynamoDB would
    def put_item(self, TableName, Item, ConditionExpression=None, ExpressionAttributeValues=None,  # noqa: N803
                 **_):
        fault = self._enter("PutItem")
        key = Item["id"]["S"]
        old = self.items.get(key)
        if ConditionExpression and old is not None:
            now = int(ExpressionAttributeValues[":now"]["N"])
            stale = old["status"]["S"] == "IN_PROGRESS" and int(old["lease_until"]["N"]) < now
            if not (int(old["expiration"]["N"]) < now or stale):
                raise _client_error("ConditionalCheckFailedException", 400, "PutItem")
        self.items[key] = Item
        self._leave(fault)
        return {"Attributes": old} if old else {}

    def delete_item(self, TableName, Key, ConditionExpression, ExpressionAttributeValues, **_):  # noqa: N803
        fault = self._enter("DeleteItem")
        old = self.items.get(Key["id"]["S"])
        if old is None or old["status"]["S"] != "IN_PROGRESS" \
                or old["first_message_id"]["S"] != ExpressionAttributeValues[":me"]["S"]:
            raise _client_error("ConditionalCheckFailedException", 400, "DeleteItem")
        del self.items[Key["id"]["S"]]
        self._leave(fault)
        return {}

    def get_item(self, TableName, Key, **_):  # noqa: N803
        fault = self._enter("GetItem")
        item = self.items.get(Key["id"]["S"])
        self._leave(fault)
        return {"Item": item} if item else {}

    # SQS (the dead-letter queue; the visibility of failed records)
    def change_message_visibility_batch(self, QueueUrl, Entries):  # noqa: N803
        fault = self._enter("ChangeMessageVisibilityBatch")
        for entry in Entries:
            self.visibility[entry["ReceiptHandle"]] = entry["VisibilityTimeout"]
        self._leave(fault)
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    def send_message(self, QueueUrl, MessageBody, MessageAttributes, **_):  # noqa: N803
        fault = self._enter("SendMessage")
        self.dead_letters.append({"QueueUrl": QueueUrl, "Body": MessageBody,
                                  "Attributes": MessageAttributes})
        self._leave(fault)
        return {"MessageId": str(uuid.uuid4())}


def operations() -> tuple[str, ...]:
    return ("DescribeInstances", "DescribeInstanceInformation", "SendCommand", "ListCommands",
            "CompleteLifecycleAction", "PutItem", "GetItem", "DeleteItem", "SendMessage",
            "ChangeMessageVisibilityBatch")


def as_clients(aws: FakeAws) -> dict[str, Any]:
    return {"ec2": aws, "ssm": aws, "autoscaling": aws}
