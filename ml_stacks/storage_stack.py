"""Storage stack (stateful): the stage's KMS keys, buckets and the image repository.

One key per data class (docs/security.md, "Encryption keys"): ``data_key``
(training data, checkpoints, models, images, volumes, run records; the
stage's original key, so everything it encrypted stays readable),
``capture_key`` (endpoint request/response captures, possibly personal
data), ``logs_key`` (every log group of the stage) and ``messaging_key``
(queues and topics). Each key's policy admits the services that use it
under the conditions they support, and nothing else.

Construct IDs here are a contract: a changed ID replaces a bucket, a key or
a repository. ``tests/unit/test_storage_stack.py`` pins the logical IDs.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from constructs_lib.bucket_replication import BucketReplication, ReplicaTarget
from constructs_lib.secure_bucket import SecureBucket, noncurrent_version_rule
from ml_stacks.base_stack import StageStack
from ml_stacks.config import StageConfig
from ml_stacks.log_groups import AUTO_DELETE_PROVIDER, allow_logs_service, encrypt_provider_logs
from ml_stacks.replica_stack import ReplicaStack

ABORT_INCOMPLETE_UPLOADS = cdk.Duration.days(7)
# What a publisher to an SSE-KMS topic or queue needs on its key (SNS and
# SQS developer guides): a data key for the message, Decrypt to reuse it.
MESSAGE_KEY_ACTIONS = ["kms:GenerateDataKey", "kms:Decrypt"]
# Services that publish alarms and budget notifications to the stage's
# topics on the stage's behalf; both send aws:SourceAccount.
ACCOUNT_SCOPED_TOPIC_PUBLISHERS = ("cloudwatch.amazonaws.com", "budgets.amazonaws.com")
EVENTBRIDGE = "events.amazonaws.com"


class StorageStack(StageStack):
    """Exposes ``data_key``, ``capture_key``, ``logs_key``, ``messaging_key``
    (``kms.Key``), ``training_data_bucket``, ``checkpoint_bucket``,
    ``model_artifacts_bucket``, ``data_capture_bucket``, ``access_log_bucket``
    and ``image_repository`` as objects for the other stacks of the stage.

    The training data and model artifacts buckets are versioned; with
    ``storage.deletion_protection`` their policies deny destroying versions
    or the protection to all but the break-glass and deploy roles; with a
    ``replica`` (the stage's ``ReplicaStack``, deployed first) they
    replicate into it, as ``replication``."""

    @property
    def buckets(self) -> list[s3.IBucket]:
        """Every bucket of the stage (drift detection reads their configuration)."""
        return [self.access_log_bucket, self.training_data_bucket, self.checkpoint_bucket,
                self.model_artifacts_bucket, self.data_capture_bucket]

    def __init__(self, scope: Construct, construct_id: str, *, config: StageConfig,
                 replica: ReplicaStack | None = None) -> None:
        storage = config.storage
        super().__init__(scope, construct_id, config=config,
                         description=f"ml-infra {config.name}: KMS keys, buckets, ECR (stateful)",
                         termination_protection=storage.retain)

        self._build_keys(config)
        self._allow_logs_service(config)
        self._allow_messaging_services()
        self._build_access_log_bucket(config)
        self._build_buckets(config)
        self._protect_data(config, replica)
        self._build_image_repository(config)
        self._build_provider_logs(config)
        self._add_outputs()

    def _key(self, construct_id: str, alias: str, description: str) -> kms.Key:
        return kms.Key(
            self,
            construct_id,
            alias=alias,
            description=description,
            enable_key_rotation=True,
            removal_policy=self.removal_policy,
            # A deleted key makes everything it encrypted unreadable: keep
            # the longest grace period to undo a mistaken delete.
            pending_window=cdk.Duration.days(30),
        )

    def _build_keys(self, config: StageConfig) -> None:
        prefix, name = config.stack_prefix, config.name
        # "Key" and its alias are the stage's original single key: its ID
        # never changes, so every object it ever encrypted stays readable.
        self.data_key = self._key(
            "Key", f"alias/{prefix}",
            f"ml-infra {name}: training data, checkpoints, models, images, volumes, runs")
        self.capture_key = self._key(
            "CaptureKey", f"alias/{prefix}/capture",
            f"ml-infra {name}: endpoint request/response captures (may hold personal data)")
        self.logs_key = self._key("LogsKey", f"alias/{prefix}/logs",
                                  f"ml-infra {name}: CloudWatch Logs of the stage")
        self.messaging_key = self._key("MessagingKey", f"alias/{prefix}/messaging",
                                       f"ml-infra {name}: SQS queues and SNS topics")

    def _allow_logs_service(self, config: StageConfig) -> None:
        """CloudWatch Logs may use the logs key for the stage's log groups only."""
        allow_logs_service(self.logs_key, config)

    def _allow_messaging_services(self) -> None:
        """Services that deliver into the stage's topics and queues.

        Each statement is confined to this account: by ``aws:SourceAccount``
        where the service sends it, and for topics also by the encryption
        context SNS binds to every message (``aws:sns:topicArn``).
        EventBridge publishing to an encrypted SNS topic sends no
        ``aws:SourceAccount`` (DESIGN.md, "First deploy"): its topic
        statement has the encryption context alone; the topic policy still
        admits only this account's rules. EventBridge delivering to an
        encrypted queue does send ``aws:SourceAccount`` and ``aws:SourceArn``.
        """
        key = self.messaging_key
        # SNS calls KMS with the topic's ARN as encryption context
        # (aws:sns:topicArn; AWS's own key policies for services publishing
        # to encrypted topics condition on it, e.g. GameLift FlexMatch).
        stage_topics = {"kms:EncryptionContext:aws:sns:topicArn": self.format_arn(
            service="sns", resource="*", arn_format=cdk.ArnFormat.NO_RESOURCE_NAME)}
        same_account = {"aws:SourceAccount": self.account}
        key.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowAlarmsAndBudgetsToPublishToStageTopics",
            principals=[iam.ServicePrincipal(s) for s in ACCOUNT_SCOPED_TOPIC_PUBLISHERS],
            actions=MESSAGE_KEY_ACTIONS,
            resources=["*"],
            conditions={"StringEquals": same_account, "ArnLike": stage_topics},
        ))
        key.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowEventBridgeToPublishToStageTopics",
            principals=[iam.ServicePrincipal(EVENTBRIDGE)],
            actions=MESSAGE_KEY_ACTIONS,
            resources=["*"],
            conditions={"ArnLike": stage_topics},
        ))
        key.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowEventBridgeRulesToSendToStageQueues",
            principals=[iam.ServicePrincipal(EVENTBRIDGE)],
            actions=MESSAGE_KEY_ACTIONS,
            resources=["*"],
            conditions={"StringEquals": same_account, "ArnLike": {"aws:SourceArn": self.format_arn(
                service="events", resource="rule", resource_name="*")}},
        ))

    def _build_access_log_bucket(self, config: StageConfig) -> None:
        storage = config.storage
        removal = self.removal_policy
        # S3 server access logs can only be delivered to an SSE-S3 bucket.
        self.access_log_bucket = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-access-logs",
                    expiration=cdk.Duration.days(storage.access_log_expiration_days),
                    abort_incomplete_multipart_upload_after=ABORT_INCOMPLETE_UPLOADS,
                )
            ],
            removal_policy=removal,
            auto_delete_objects=removal == cdk.RemovalPolicy.DESTROY,
        )

    def _bucket(self, construct_id: str, log_prefix: str, *, encryption_key: kms.IKey | None = None,
                **kwargs) -> SecureBucket:
        """A ``SecureBucket`` encrypted with ``encryption_key`` (default: the data key)."""
        return SecureBucket(
            self,
            construct_id,
            encryption_key=encryption_key or self.data_key,
            access_log_bucket=self.access_log_bucket,
            log_prefix=log_prefix,
            removal_policy=self.removal_policy,
            **kwargs,
        )

    def _build_buckets(self, config: StageConfig) -> None:
        storage = config.storage
        bucket = self._bucket
        self.training_data_bucket = bucket(
            "TrainingData",
            "training-data",
            versioned=True,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="tier-raw-data",
                    prefix="raw/",
                    transitions=[
                        s3.Transition(storage_class=s3.StorageClass.INFREQUENT_ACCESS,
                                      transition_after=cdk.Duration.days(90)),
                        s3.Transition(storage_class=s3.StorageClass.GLACIER,
                                      transition_after=cdk.Duration.days(365)),
                    ],
                ),
                s3.LifecycleRule(id="abort-incomplete-uploads",
                                 abort_incomplete_multipart_upload_after=ABORT_INCOMPLETE_UPLOADS),
                noncurrent_version_rule(storage.training_data_noncurrent_expiration_days,
                                        rule_id="expire-noncurrent-data", abort_uploads_after=None),
            ],
        )
        self.checkpoint_bucket = bucket(
            "Checkpoints",
            "checkpoints",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-checkpoints",
                    expiration=cdk.Duration.days(storage.checkpoint_expiration_days),
                    abort_incomplete_multipart_upload_after=ABORT_INCOMPLETE_UPLOADS,
                )
            ],
        )
        self.model_artifacts_bucket = bucket(
            "ModelArtifacts",
            "model-artifacts",
            versioned=True,
            lifecycle_rules=[noncurrent_version_rule(storage.model_noncurrent_expiration_days,
                                                     rule_id="expire-noncurrent-models")],
        )

        # Request/response captures of the SageMaker endpoints, one prefix per
        # model (s3://<bucket>/<model>/). Apart from the model artifacts: they
        # may hold personal data and expire on their own schedule.
        self.data_capture_bucket = bucket(
            "DataCapture",
            "data-capture",
            encryption_key=self.capture_key,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-captures",
                    expiration=cdk.Duration.days(storage.data_capture_expiration_days),
                    abort_incomplete_multipart_upload_after=ABORT_INCOMPLETE_UPLOADS,
                )
            ],
        )

    def _protect_data(self, config: StageConfig, replica: ReplicaStack | None) -> None:
        """Deletion protection and replication of the training data and model artifacts."""
        data_buckets = (self.training_data_bucket, self.model_artifacts_bucket)
        if config.storage.deletion_protection:
            for data_bucket in data_buckets:
                data_bucket.protect_from_deletion(exempt_role_arns=self.deletion_exempt_role_arns())
        self.replication: BucketReplication | None = None
        if replica is None:
            return
        # Replicas are addressed by their fixed names: the replica stack must
        # exist first (cdk deploy '<stage>/*' follows this dependency).
        self.add_stack_dependency(replica, "replicates into the replica buckets and key")
        self.replication = BucketReplication(
            self, "Replication",
            role_name=replica.replication_role_name,
            targets=[
                ReplicaTarget(source=self.training_data_bucket,
                              destination_bucket_arn=replica.training_data_bucket_arn,
                              replica_key_arn=replica.key_alias_arn),
                ReplicaTarget(source=self.model_artifacts_bucket,
                              destination_bucket_arn=replica.model_artifacts_bucket_arn,
                              replica_key_arn=replica.key_alias_arn),
            ],
        )

    def _build_image_repository(self, config: StageConfig) -> None:
        storage = config.storage
        removal = self.removal_policy
        self.image_repository = ecr.Repository(
            self,
            "Images",
            # Generated unless config keeps an existing name: a retained
            # repository with a fixed name makes the next create fail.
            repository_name=storage.image_repository_name,
            image_scan_on_push=True,
            image_tag_mutability=(ecr.TagMutability.IMMUTABLE if storage.ecr_immutable_tags
                                  else ecr.TagMutability.MUTABLE),
            encryption=ecr.RepositoryEncryption.KMS,
            encryption_key=self.data_key,
            lifecycle_rules=[
                ecr.LifecycleRule(
                    description="Expire untagged images after a day",
                    tag_status=ecr.TagStatus.UNTAGGED,
                    max_image_age=cdk.Duration.days(1),
                    rule_priority=1,
                ),
                ecr.LifecycleRule(
                    description=f"Keep the last {storage.ecr_keep_tagged_images} tagged images",
                    tag_status=ecr.TagStatus.TAGGED,
                    tag_pattern_list=["*"],
                    max_image_count=storage.ecr_keep_tagged_images,
                    rule_priority=2,
                ),
            ],
            removal_policy=removal,
            empty_on_delete=removal == cdk.RemovalPolicy.DESTROY,
        )

    def _build_provider_logs(self, config: StageConfig) -> None:
        """Dev empties buckets on destroy through CDK's provider Lambda: its logs too."""
        encrypt_provider_logs(self, AUTO_DELETE_PROVIDER,
                              config=config, purpose="auto-delete-objects", key=self.logs_key)

    def _add_outputs(self) -> None:
        for output_id, value, description in (
            ("TrainingDataBucketName", self.training_data_bucket.bucket_name, "Training data"),
            ("CheckpointBucketName", self.checkpoint_bucket.bucket_name, "Training checkpoints"),
            ("ModelArtifactsBucketName", self.model_artifacts_bucket.bucket_name, "Model artifacts"),
            ("DataCaptureBucketName", self.data_capture_bucket.bucket_name,
             "Endpoint request/response captures"),
            ("ImageRepositoryUri", self.image_repository.repository_uri, "docker push target"),
            ("KeyArn", self.data_key.key_arn, "Data key: training data, checkpoints, models"),
            ("CaptureKeyArn", self.capture_key.key_arn, "Endpoint data-capture key"),
            ("LogsKeyArn", self.logs_key.key_arn, "CloudWatch Logs key"),
            ("MessagingKeyArn", self.messaging_key.key_arn, "SQS and SNS key"),
        ):
            cdk.CfnOutput(self, output_id, value=value, description=description)
