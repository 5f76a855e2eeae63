"""Turns spot warnings, rebalance recommendations, termination hooks, AWS Health
scheduled changes and capacity reservation endings into checkpoints."""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_autoscaling_hooktargets as hooktargets
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from constructs_lib.acknowledge import UnscopedApis, acknowledge
from constructs_lib.gpu_training_fleet import FLEET_TAG_KEY, GpuTrainingFleet
from constructs_lib.kms_grants import PRODUCER_KEY_ACTIONS, grant_key_via, grant_send_messages
from constructs_lib.node_agent import AGENT_ENV_FILE, AGENT_PROGRAM

# Time budget (README "Interruption time budget"): a record that fails
# transiently is retried and acted on within RETRY_BUDGET_SECONDS of its
# first delivery. Worst case = visibility timeout (the failed record is
# invisible that long) + batching window + one more function timeout.
RETRY_BUDGET_SECONDS = 60
# AWS's guidance for SQS event sources: visibility >= 6 x function timeout
# + batching window (Lambda itself rejects visibility < function timeout).
VISIBILITY_TIMEOUT_FACTOR = 6
DEFAULT_LAMBDA_TIMEOUT_SECONDS = 8
# No batching window: a notice is worth most in its first seconds.
MAX_BATCHING_WINDOW_SECONDS = 0
BATCH_SIZE = 10
# At most this many batches at once: 5 x 10 records bounds the burst of
# SendCommand/DescribeInstances calls in a storm (README "Storms").
MAX_CONCURRENCY = 5
# >= 5 (AWS's guidance against throttled invocations dead-lettering
# healthy messages); 5 x 48 s puts a poisoned record in the DLQ (and the
# alarm) before a 300 s hook heartbeat runs out.
MAX_RECEIVE_COUNT = 5
# SendCommand's delivery timeout: a checkpoint that cannot start within a
# minute of a two-minute spot notice is too late anyway.
COMMAND_DELIVERY_TIMEOUT_SECONDS = 60
# Patterns of the document's parameters. Nothing outside them reaches the
# shell; lambda/interruption_handler/messages.py checks the same ones.
REASON_PATTERN = ("^(spot-interruption|rebalance-recommendation|lifecycle-terminate|health-scheduled-change"
                  "|capacity-block-expiring|capacity-reservation-interruption)$")
EVENT_ID_PATTERN = r"^[A-Za-z0-9-]{1,128}$"
LIFECYCLE_HOOK_NAME_PATTERN = r"^[A-Za-z0-9_/-]{0,255}$"
LIFECYCLE_ACTION_TOKEN_PATTERN = (
    r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})?$"
)
AUTOSCALING_GROUP_NAME_PATTERN = r"^[A-Za-z0-9_./-]{0,255}$"
EXECUTION_TIMEOUT_PATTERN = r"^[0-9]{1,5}$"
RUNTIME = lambda_.Runtime.PYTHON_3_14
# The handler's EMF metrics (lambda/interruption_handler/telemetry.py has the
# same two values; a test keeps them equal).
METRICS_NAMESPACE = "MlInfra/Training"
SERVICE_NAME = "interruption-handler"
SPOT_WARNING = "EC2 Spot Instance Interruption Warning"
REBALANCE_RECOMMENDATION = "EC2 Instance Rebalance Recommendation"
RESERVATION_INTERRUPTION = "EC2 Capacity Reservation Instance Interruption Warning"
# EC2's documentation spells it both ways (DESIGN.md, AWS facts): match both.
CAPACITY_BLOCK_WARNINGS = ("Capacity Block Expiration Warning",
                           "Capacity Block Reservation Expiration Warning")
HEALTH_EVENT = "AWS Health Event"
# AWS Health scheduled changes after which an EC2 instance is stopped,
# terminated or rebooted; the handler (messages.HEALTH_EVENT_TYPE_CODES)
# accepts exactly these, a test keeps the two equal.
HEALTH_EVENT_TYPE_CODES = (
    "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED",
    "AWS_EC2_INSTANCE_RETIREMENT_EXPEDITED",
    "AWS_EC2_PERSISTENT_INSTANCE_RETIREMENT_SCHEDULED",
    "AWS_EC2_PERSISTENT_INSTANCE_RETIREMENT_EXPEDITED",
    "AWS_EC2_INSTANCE_STOP_SCHEDULED",
    "AWS_EC2_INSTANCE_TERMINATION_SCHEDULED",
    "AWS_EC2_INSTANCE_REBOOT_MAINTENANCE_SCHEDULED",
    "AWS_EC2_INSTANCE_REBOOT_FLEXIBLE_MAINTENANCE_SCHEDULED",
    "AWS_EC2_SYSTEM_REBOOT_MAINTENANCE_SCHEDULED",
)
HEALTH_STATUS_CODES = ("upcoming", "open")
# A notice with minutes of warning is worthless after this; a scheduled
# change (days ahead) still matters after an hour of failed deliveries.
SHORT_NOTICE_MAX_AGE = cdk.Duration.minutes(10)
SCHEDULED_CHANGE_MAX_AGE = cdk.Duration.hours(1)


class InterruptionHandler(Construct):
    """Everything between "this instance is going away" and the node agent.

    * A termination lifecycle hook on ``fleet`` (default result CONTINUE,
      ``heartbeat_timeout``) and EventBridge rules for spot interruption
      warnings, rebalance recommendations, capacity reservation instance
      interruption warnings, Capacity Block expiration warnings (both
      spellings) and AWS Health EC2 scheduled changes that stop, retire or
      reboot instances, all into one queue (KMS with
      ``key``, TLS only, visibility 6 x the Lambda timeout, a DLQ after 5
      receives; the rules' targets dead-letter into the same DLQ).
    * The interruption Lambda (``lambda_code_dir``) on that queue with
      per-record failures, deduplicating through a DynamoDB idempotency
      table, allowed to complete lifecycle actions of this group only and
      to run this construct's SSM document on instances tagged as this
      fleet only.
    * The SSM document that runs the node agent's ``checkpoint`` command,
      with every parameter bound by an ``allowedPattern``.
    * An alarm to ``alarm_topic`` as soon as the DLQ holds a message.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        fleet: GpuTrainingFleet,
        key: kms.IKey,
        alarm_topic: sns.ITopic,
        lambda_code_dir: Path,
        heartbeat_timeout: cdk.Duration,
        checkpoint_budget: cdk.Duration,
        rebalance_action: str = "checkpoint",
        lambda_timeout: cdk.Duration = cdk.Duration.seconds(DEFAULT_LAMBDA_TIMEOUT_SECONDS),
        log_retention: logs.RetentionDays = logs.RetentionDays.THREE_MONTHS,
        log_group_name: str | None = None,
        log_key: kms.IKey | None = None,
    ) -> None:
        """``log_group_name`` / ``log_key``: the function's log group name and
        encryption key. Defaults: a name CloudFormation generates, CloudWatch
        Logs' own encryption."""
        super().__init__(scope, construct_id)
        timeout_seconds = self._check_retry_budget(lambda_timeout)
        self.lifecycle_hook_name = f"{fleet.auto_scaling_group_name}-terminating"
        self._build_queues(key, timeout_seconds)
        self._build_lifecycle_hook(fleet, heartbeat_timeout)
        self.rules: list[events.Rule] = []
        self._add_rules(fleet.auto_scaling_group_name)
        self._build_document(checkpoint_budget)
        self._build_idempotency_table()
        self._build_log_group(log_retention, log_group_name, log_key)
        self._build_function(fleet, lambda_code_dir, rebalance_action, lambda_timeout, timeout_seconds)
        self._grant_function(fleet)
        self._build_alarms(fleet, alarm_topic)

    @staticmethod
    def _check_retry_budget(lambda_timeout: cdk.Duration) -> int:
        """The Lambda timeout in seconds, if it keeps a retry within RETRY_BUDGET_SECONDS."""
        timeout_seconds = int(lambda_timeout.to_seconds())
        if worst_case_retry_seconds(timeout_seconds) > RETRY_BUDGET_SECONDS:
            raise ValueError(
                f"lambda_timeout {timeout_seconds} s gives a worst-case retry of "
                f"{worst_case_retry_seconds(timeout_seconds)} s (visibility {VISIBILITY_TIMEOUT_FACTOR}x "
                f"timeout + batching window + timeout); at most {RETRY_BUDGET_SECONDS} s is allowed: "
                f"use at most {max_lambda_timeout_seconds()} s")
        return timeout_seconds

    def _build_queues(self, key: kms.IKey, timeout_seconds: int) -> None:
        """The dead-letter queue, then the interruption queue in front of it."""
        self.dead_letter_queue = sqs.Queue(
            self,
            "DeadLetterQueue",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=key,
            enforce_ssl=True,
            retention_period=cdk.Duration.days(14),
        )
        self.queue = sqs.Queue(
            self,
            "Queue",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=key,
            enforce_ssl=True,
            visibility_timeout=cdk.Duration.seconds(visibility_timeout_seconds(timeout_seconds)),
            dead_letter_queue=sqs.DeadLetterQueue(queue=self.dead_letter_queue,
                                                  max_receive_count=MAX_RECEIVE_COUNT),
        )
        # The same queue without its key, for CDK helpers whose grants would
        # add key actions usable outside SQS, kms:GenerateDataKey* and
        # kms:ReEncrypt* among them (hook role, rule targets, event source).
        self._keyless_queue = sqs.Queue.from_queue_attributes(
            self, "KeylessQueueView", queue_arn=self.queue.queue_arn, queue_url=self.queue.queue_url)

    def _build_lifecycle_hook(self, fleet: GpuTrainingFleet,
                              heartbeat_timeout: cdk.Duration) -> None:
        """The fleet's termination lifecycle hook, notifying the queue.

        ``QueueHook`` grants its role ``Queue.grant_send_messages``, whose key
        part is ``kms:GenerateDataKey*`` and ``kms:ReEncrypt*``. It is handed
        the keyless view of the queue, so it grants the SQS actions alone;
        the key actions a producer needs are granted here, through SQS only.
        """
        self.lifecycle_hook = fleet.auto_scaling_group.add_lifecycle_hook(
            "TerminationHook",
            lifecycle_hook_name=self.lifecycle_hook_name,
            lifecycle_transition=autoscaling.LifecycleTransition.INSTANCE_TERMINATING,
            notification_target=hooktargets.QueueHook(self._keyless_queue),
            default_result=autoscaling.DefaultResult.CONTINUE,
            heartbeat_timeout=heartbeat_timeout,
        )
        grant_key_via(self.lifecycle_hook.role, self.queue.encryption_master_key, "sqs",
                      PRODUCER_KEY_ACTIONS)

    def _build_document(self, checkpoint_budget: cdk.Duration) -> None:
        """The checkpoint Run Command document and its ARN."""
        stack = cdk.Stack.of(self)
        self.document = ssm.CfnDocument(
            self,
            "CheckpointDocument",
            document_type="Command",
            content=checkpoint_document(budget_seconds=int(checkpoint_budget.to_seconds())),
        )
        self.document_arn = (f"arn:{stack.partition}:ssm:{stack.region}:{stack.account}:"
                             f"document/{self.document.ref}")

    def _build_idempotency_table(self) -> None:
        """The DynamoDB table the handler deduplicates events through."""
        self.idempotency_table = dynamodb.Table(
            self,
            "IdempotencyTable",
            partition_key=dynamodb.Attribute(name="id", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            # Event ids and decisions only: the AWS managed key is enough
            # and needs no key policy or grants.
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True),
            time_to_live_attribute="expiration",
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )

    def _build_log_group(self, log_retention: logs.RetentionDays, log_group_name: str | None,
                         log_key: kms.IKey | None) -> None:
        """The function's log group (events and decisions only: DESTROY)."""
        self.log_group = logs.LogGroup(self, "LogGroup", retention=log_retention,
                                       log_group_name=log_group_name, encryption_key=log_key,
                                       removal_policy=cdk.RemovalPolicy.DESTROY)

    def _build_function(
        self,
        fleet: GpuTrainingFleet,
        lambda_code_dir: Path,
        rebalance_action: str,
        lambda_timeout: cdk.Duration,
        timeout_seconds: int,
    ) -> None:
        """Role and the interruption Lambda on the queue (standard library and boto3 only: no layer)."""
        self.role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                             description=f"Interruption handler of {fleet.auto_scaling_group_name}")
        self.log_group.grant_write(self.role)
        self.function = lambda_.Function(
            self,
            "Resource",
            description=f"Checkpoints {fleet.auto_scaling_group_name} instances before termination",
            runtime=RUNTIME,
            architecture=lambda_.Architecture.X86_64,
            handler="handler.handler",
            code=lambda_.Code.from_asset(str(lambda_code_dir), exclude=["__pycache__", "*.pyc"]),
            timeout=lambda_timeout,
            memory_size=256,
            role=self.role,
            log_group=self.log_group,
            environment={
                "AUTOSCALING_GROUP_NAME": fleet.auto_scaling_group_name,
                "FLEET_TAG_KEY": FLEET_TAG_KEY,
                "FLEET_TAG_VALUE": fleet.fleet_tag[1],
                "CHECKPOINT_DOCUMENT_NAME": self.document.ref,
                "IDEMPOTENCY_TABLE_NAME": self.idempotency_table.table_name,
                "REBALANCE_ACTION": rebalance_action,
                "COMMAND_DELIVERY_TIMEOUT_SECONDS": str(COMMAND_DELIVERY_TIMEOUT_SECONDS),
                "DEAD_LETTER_QUEUE_URL": self.dead_letter_queue.queue_url,
                # Failed records are made visible again sooner (lambda requeue.py).
                "QUEUE_URL": self.queue.queue_url,
                "QUEUE_VISIBILITY_TIMEOUT_SECONDS": str(visibility_timeout_seconds(timeout_seconds)),
            },
        )
        # The keyless view: the consume grant would add kms:Decrypt usable
        # outside SQS; it is granted below through SQS only.
        self.function.add_event_source(event_sources.SqsEventSource(
            self._keyless_queue, batch_size=BATCH_SIZE, report_batch_item_failures=True,
            max_batching_window=cdk.Duration.seconds(MAX_BATCHING_WINDOW_SECONDS),
            max_concurrency=MAX_CONCURRENCY))
        grant_key_via(self.role, self.queue.encryption_master_key, "sqs", ["kms:Decrypt"])
        # Malformed messages are copied here at once (lambda quarantine.py).
        grant_send_messages(self.dead_letter_queue, self.role)

    def _grant_function(self, fleet: GpuTrainingFleet) -> None:
        """Table, lifecycle, SendCommand and lookup permissions, with their acknowledgements."""
        stack = cdk.Stack.of(self)
        self.idempotency_table.grant(self.role, "dynamodb:GetItem", "dynamodb:PutItem",
                                     "dynamodb:UpdateItem", "dynamodb:DeleteItem")
        fleet.grant_complete_lifecycle_action(self.role)
        self.role.add_to_principal_policy(iam.PolicyStatement(
            sid="RunTheCheckpointDocument", actions=["ssm:SendCommand"],
            resources=[self.document_arn]))
        fleet_instances = f"arn:{stack.partition}:ec2:{stack.region}:{stack.account}:instance/*"
        self.role.add_to_principal_policy(iam.PolicyStatement(
            sid="OnFleetInstancesOnly", actions=["ssm:SendCommand"], resources=[fleet_instances],
            conditions={"StringEquals": {f"ssm:resourceTag/{FLEET_TAG_KEY}": fleet.fleet_tag[1]}}))
        acknowledge(self.role, f"AwsSolutions::AwsSolutions-IAM5[Resource::{fleet_instances}]",
                    f"SendCommand is allowed only on instances tagged {FLEET_TAG_KEY}="
                    f"{fleet.fleet_tag[1]} (ssm:resourceTag condition): instance IDs of a spot "
                    "fleet are not known in advance.")
        UnscopedApis.of(self.role).allow("LookUpInstances", {
            "ec2:DescribeInstances": "no resource type; reads the batch's instances",
            "ssm:DescribeInstanceInformation": "no resource type; is the instance's agent online",
            "ssm:ListCommands": "no resource type; commands already sent to the instance",
        })

    def _build_alarms(self, fleet: GpuTrainingFleet, alarm_topic: sns.ITopic) -> None:
        """The dead-letter and malformed-message alarms, both to ``alarm_topic``."""
        self.dead_letter_alarm = cloudwatch.Alarm(
            self,
            "DeadLetterAlarm",
            alarm_description=(f"Interruption messages of {fleet.auto_scaling_group_name} failed "
                               "5 times, could not be delivered, or could not be parsed (copied "
                               "by the handler): read the DLQ, fix, redrive."),
            metric=self.dead_letter_queue.metric_approximate_number_of_messages_visible(
                period=cdk.Duration.minutes(1), statistic="Maximum"),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.dead_letter_alarm.add_alarm_action(cloudwatch_actions.SnsAction(alarm_topic))

        self.malformed_alarm = cloudwatch.Alarm(
            self,
            "MalformedMessagesAlarm",
            alarm_description=(f"The interruption handler of {fleet.auto_scaling_group_name} met a "
                               "message it could not fully parse (changed AWS format or a bug); "
                               "it acted on what it could and copied the message to the DLQ."),
            metric=self.metric_malformed_messages(period=cdk.Duration.minutes(1)),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.malformed_alarm.add_alarm_action(cloudwatch_actions.SnsAction(alarm_topic))

    def _add_rules(self, group_name: str) -> None:
        """One rule per event type, each as narrow as its event allows."""
        health = {"service": ["EC2"], "eventTypeCategory": ["scheduledChange"],
                  "eventTypeCode": list(HEALTH_EVENT_TYPE_CODES), "statusCode": list(HEALTH_STATUS_CODES)}
        for rule_id, source, detail_types, detail, max_age in (
            ("SpotInterruptionRule", "aws.ec2", [SPOT_WARNING], None, SHORT_NOTICE_MAX_AGE),
            ("RebalanceRecommendationRule", "aws.ec2", [REBALANCE_RECOMMENDATION], None,
             SHORT_NOTICE_MAX_AGE),
            # Interruptible capacity reservations: two minutes, like spot.
            ("ReservationInterruptionRule", "aws.ec2", [RESERVATION_INTERRUPTION], None,
             SHORT_NOTICE_MAX_AGE),
            # 40 minutes before a Capacity Block ends (instances go 10 minutes later).
            ("CapacityBlockExpirationRule", "aws.ec2", list(CAPACITY_BLOCK_WARNINGS), None,
             SHORT_NOTICE_MAX_AGE),
            ("HealthScheduledChangeRule", "aws.health", [HEALTH_EVENT], health, SCHEDULED_CHANGE_MAX_AGE),
        ):
            rule = events.Rule(
                self,
                rule_id,
                description=f"{' / '.join(detail_types)} -> interruption queue of {group_name}",
                event_pattern=events.EventPattern(source=[source], detail_type=detail_types, detail=detail),
            )
            rule.add_target(targets.SqsQueue(
                self._keyless_queue,
                dead_letter_queue=self.dead_letter_queue,
                # A notice is useless after its warning time; a failed
                # delivery lands in the DLQ and alarms instead of retrying
                # for a day.
                max_event_age=max_age,
                retry_attempts=10,
            ))
            # The keyless view is this very queue, in this stack: its
            # environment only looks unresolved because it is parsed from the ARN.
            cdk.Annotations.of(rule).acknowledge_warning(
                "@aws-cdk/aws-events:ruleUnresolvedEnvironment",
                "The target is this construct's own queue (a keyless view of it), same stack.")
            self.rules.append(rule)
        # Given the keyless view, SqsQueue writes neither the queue policy nor
        # a key policy statement: the queue admits exactly these rules, and
        # the messaging key admits EventBridge rules of this account
        # (StorageStack), with the producer's actions only.
        self.queue.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowInterruptionRulesToSend",
            principals=[iam.ServicePrincipal("events.amazonaws.com")],
            actions=["sqs:SendMessage"],
            resources=[self.queue.queue_arn],
            conditions={"ArnEquals": {"aws:SourceArn": [rule.rule_arn for rule in self.rules]}},
        ))

    def metric_records_failed(self, **props) -> cloudwatch.Metric:
        """Records handed back to SQS for a retry (EMF metric of the Lambda)."""
        return self._metric("RecordsFailed", **props)

    def metric_malformed_messages(self, **props) -> cloudwatch.Metric:
        """Messages quarantined, or acted on in part, because they did not parse."""
        return self._metric("MalformedMessages", **props)

    @staticmethod
    def _metric(name: str, **props) -> cloudwatch.Metric:
        return cloudwatch.Metric(namespace=METRICS_NAMESPACE, metric_name=name,
                                 dimensions_map={"service": SERVICE_NAME},
                                 statistic="Sum", **props)


def visibility_timeout_seconds(lambda_timeout_seconds: int) -> int:
    return VISIBILITY_TIMEOUT_FACTOR * lambda_timeout_seconds + MAX_BATCHING_WINDOW_SECONDS


def worst_case_retry_seconds(lambda_timeout_seconds: int) -> int:
    """First delivery to the end of the retry's invocation, for a record failed once."""
    return (visibility_timeout_seconds(lambda_timeout_seconds) + MAX_BATCHING_WINDOW_SECONDS
            + lambda_timeout_seconds)


def max_lambda_timeout_seconds() -> int:
    return max(t for t in range(1, RETRY_BUDGET_SECONDS)
               if worst_case_retry_seconds(t) <= RETRY_BUDGET_SECONDS)


def checkpoint_document(*, budget_seconds: int) -> dict:
    """The Run Command document that runs the node agent's checkpoint (CONTRACT.md).

    Parameter values are substituted into the script by SSM; the
    ``allowedPattern``s admit no quote, space or shell metacharacter, so a
    value cannot leave its single quotes.
    """
    def parameter(description: str, pattern: str, default: str | None = None) -> dict:
        spec = {"type": "String", "description": description, "allowedPattern": pattern}
        if default is not None:
            spec["default"] = default
        return spec

    return {
        "schemaVersion": "2.2",
        "description": "Signal the trainer, wait for its checkpoint, upload it to S3 and "
                       "complete the termination lifecycle action (ml-node-agent).",
        "parameters": {
            "Reason": parameter("Why the checkpoint is requested", REASON_PATTERN),
            "EventId": parameter("EventBridge event id or lifecycle request id", EVENT_ID_PATTERN),
            "LifecycleHookName": parameter("Termination hook, with a token", LIFECYCLE_HOOK_NAME_PATTERN, ""),
            "LifecycleActionToken": parameter("Lifecycle action token; empty for spot and rebalance "
                                              "notices", LIFECYCLE_ACTION_TOKEN_PATTERN, ""),
            "AutoScalingGroupName": parameter("Group of the lifecycle action, with a token",
                                              AUTOSCALING_GROUP_NAME_PATTERN, ""),
            "executionTimeout": parameter("Seconds before the command is stopped: the checkpoint "
                                          "budget plus 60 s for the upload",
                                          EXECUTION_TIMEOUT_PATTERN, str(budget_seconds + 60)),
        },
        "mainSteps": [{
            "action": "aws:runShellScript",
            "name": "checkpoint",
            "inputs": {
                "timeoutSeconds": "{{ executionTimeout }}",
                "runCommand": [
                    "set -eu",
                    # Run Command does not see the service's EnvironmentFile.
                    f"set -a; . {AGENT_ENV_FILE}; set +a",
                    "set -- checkpoint --reason '{{ Reason }}' --event-id '{{ EventId }}'",
                    "if [ -n '{{ LifecycleActionToken }}' ]; then",
                    "  set -- \"$@\" --lifecycle-hook-name '{{ LifecycleHookName }}'"
                    " --lifecycle-action-token '{{ LifecycleActionToken }}'"
                    " --autoscaling-group-name '{{ AutoScalingGroupName }}'",
                    "fi",
                    f"exec {AGENT_PROGRAM} \"$@\"",
                ],
            },
        }],
    }
