"""The SAM template of the Lambda function (deploy/lambda/template.yaml), checked offline.

- cfn-lint (the linter behind `sam validate --lint`) finds nothing in it;
- the function runs the handler of this repository with the environment the code reads, and the
  API event is POST /{job} behind SigV4 (AWS_IAM);
- the role is least privilege: each statement's actions and resources, resolved from the parameters
  by a small CloudFormation evaluator below, and replayed against the calls the function makes (as
  recorded for pyiceberg 0.12 and pyarrow against moto) with a small IAM matcher: the calls are
  allowed, their neighbours (another secret, another prefix, the gold tables' writes) are not;
- when aws-sam-translator is installed, the SAM transform runs too and its CloudFormation lints clean.

No AWS call is made. moto has no IAM policy simulation (simulate_principal_policy), and its request
authorisation ignores most condition keys, so the policy checks use the matcher here instead.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from cfnlint.api import ManualArgs, lint
from cfnlint.decode.decode import decode_str

from social_enrich import environment
from social_enrich.config import discover_job_configs
from social_enrich.inference import credentials

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "lambda" / "template.yaml"
JOB = ROOT / "social_enrich" / "defs" / "sentiment" / "defs.yaml"
REGION, ACCOUNT, STACK = "us-east-1", "123456789012", "social-enrich"
SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:prod/openai-AbC123"
REQUIRED = {"WarehouseBucket": "lake", "OpenAISecretArn": SECRET}
ALL_OPTIONAL = {
    **REQUIRED,
    "GoldLocation": "gold-lake/tables",
    "GlueCatalogId": "210987654321",
    "WarehouseKmsKeyArn": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1111aaaa-22bb-33cc-44dd-555555eeeeee",
    "SecretKmsKeyArn": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/6666ffff-77aa-88bb-99cc-000000dddddd",
    "Rpm": "300",
    "Tpm": "50000",
    "PipesMessagesBucket": "pipes-messages",
}
LAMBDA_TIMEOUT_LIMIT = 900
API_GATEWAY_TIMEOUT_MS = 29_000


# --- a small CloudFormation evaluator: parameters, conditions, Ref, Fn::Sub, Fn::If, Fn::GetAtt -----

_NO_VALUE = object()


class Stack:
    """The template with its parameters resolved, as CloudFormation would see it for one set of values."""

    def __init__(self, template: Mapping[str, Any], parameters: Mapping[str, str]) -> None:
        self.template = template
        declared = template["Parameters"]
        unknown = set(parameters) - set(declared)
        assert not unknown, f"not parameters of the template: {unknown}"
        missing = {name for name, spec in declared.items() if "Default" not in spec} - set(parameters)
        assert not missing, f"required parameters without a value: {missing}"
        self.values: dict[str, Any] = {name: spec.get("Default") for name, spec in declared.items()}
        self.values.update(parameters)
        self.values.update({"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws",
                            "AWS::StackName": STACK, "AWS::URLSuffix": "amazonaws.com"})
        # What Ref and Fn::GetAtt give for the template's own resources (names as CloudFormation makes them).
        self.refs = {"Function": STACK, "LogGroup": f"/aws/lambda/{STACK}", "Api": "a1b2c3d4e5",
                     "Role": f"{STACK}-Role-ABC", "InvokerPolicy": f"arn:aws:iam::{ACCOUNT}:policy/invoker",
                     "ApiCallerPolicy": f"arn:aws:iam::{ACCOUNT}:policy/api-caller"}
        self.attributes = {
            "Function.Arn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{STACK}",
            "LogGroup.Arn": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/{STACK}:*",
            "Role.Arn": f"arn:aws:iam::{ACCOUNT}:role/{STACK}-Role-ABC",
        }
        self.conditions = {name: self._condition(body) for name, body in template.get("Conditions", {}).items()}

    def _condition(self, body: Any) -> bool:
        (function, args), = body.items()
        if function == "Fn::Equals":
            left, right = (self.resolve(a) for a in args)
            return str(left) == str(right)
        if function == "Fn::Not":
            return not self._condition(args[0])
        if function == "Fn::And":
            return all(self._condition(a) for a in args)
        if function == "Fn::Or":
            return any(self._condition(a) for a in args)
        if function == "Condition":
            return self._condition(self.template["Conditions"][args])
        raise AssertionError(f"condition function not handled here: {function}")

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in self.values:
            return self.values[name]
        return self.refs[name]

    def _sub(self, text: str, extra: Mapping[str, Any]) -> str:
        def one(match: re.Match[str]) -> str:
            name = match[1]
            if name in extra:
                return str(self.resolve(extra[name]))
            if "." in name and not name.startswith("AWS::"):
                return self.attributes[name]
            return str(self._ref(name))

        return re.sub(r"\$\{([^}!]+)\}", one, text)

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            items = [self.resolve(item) for item in node]
            return [item for item in items if item is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, value), = node.items()
            if key == "Ref":
                return self._ref(value)
            if key == "Fn::GetAtt":
                return self.attributes[".".join(value)]
            if key == "Fn::Sub":
                text, extra = (value, {}) if isinstance(value, str) else value
                return self._sub(text, extra)
            if key == "Fn::If":
                name, yes, no = value
                return self.resolve(yes if self.conditions[name] else no)
            assert not key.startswith("Fn::"), f"intrinsic function not handled here: {key}"
        resolved = {key: self.resolve(value) for key, value in node.items()}
        return {key: value for key, value in resolved.items() if value is not _NO_VALUE}

    def properties(self, resource: str) -> dict[str, Any]:
        return self.resolve(self.template["Resources"][resource]["Properties"])

    def role_statements(self) -> list[dict[str, Any]]:
        (policy,) = self.properties("Role")["Policies"]
        return policy["PolicyDocument"]["Statement"]

    def managed_policy_statements(self, resource: str) -> list[dict[str, Any]]:
        return self.properties(resource)["PolicyDocument"]["Statement"]


# --- a small IAM matcher: Allow statements, Action/Resource globs, StringEquals/StringLike conditions --

def _glob(pattern: str, value: str, ignore_case: bool = False) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE if ignore_case else 0) is not None


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def allows(statements: Iterable[Mapping[str, Any]], action: str, resource: str, context: Mapping[str, str] | None = None) -> bool:
    """Whether an identity policy of these Allow statements permits the request (no Deny, no NotAction here)."""
    context = context or {}
    for statement in statements:
        assert statement["Effect"] == "Allow" and "NotAction" not in statement and "NotResource" not in statement
        if not any(_glob(a, action, ignore_case=True) for a in _listed(statement["Action"])):
            continue
        if not any(_glob(r, resource) for r in _listed(statement["Resource"])):
            continue
        conditions_hold = True
        for operator, tests in statement.get("Condition", {}).items():
            assert operator in ("StringEquals", "StringLike"), operator
            for key, expected in tests.items():
                if key not in context:  # an absent key fails a String condition
                    conditions_hold = False
                elif operator == "StringEquals":
                    conditions_hold &= context[key] in _listed(expected)
                else:
                    conditions_hold &= any(_glob(e, context[key]) for e in _listed(expected))
        if conditions_hold:
            return True
    return False


def glue_arns(database: str | None = None, table: str | None = None, catalog_id: str = ACCOUNT) -> list[str]:
    """A Glue call's resource and every ancestor: each must be allowed (Glue's rule for Data Catalog calls)."""
    base = f"arn:aws:glue:{REGION}:{catalog_id}"
    arns = [f"{base}:catalog"]
    if database:
        arns.append(f"{base}:database/{database}")
    if table:
        arns.append(f"{base}:table/{database}/{table}")
    return arns


def allows_glue(statements: list[dict[str, Any]], action: str, database: str | None = None, table: str | None = None,
                catalog_id: str = ACCOUNT) -> bool:
    return all(allows(statements, action, arn) for arn in glue_arns(database, table, catalog_id))


# --- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, problems = decode_str(TEMPLATE.read_text(encoding="utf-8"))
    assert not problems, problems
    return json.loads(json.dumps(decoded))  # cfn-lint's str/dict nodes as plain values


@pytest.fixture(scope="module")
def stack(template: dict[str, Any]) -> Stack:
    return Stack(template, REQUIRED)


@pytest.fixture(scope="module")
def full_stack(template: dict[str, Any]) -> Stack:
    return Stack(template, ALL_OPTIONAL)


def job_databases() -> tuple[set[str], str]:
    raw = yaml.safe_load(JOB.read_text(encoding="utf-8"))["attributes"]
    return {t["database"] for t in raw["connector"]["source"]["tables"]}, raw["connector"]["target"]["database"]


# --- 1. cfn-lint ----------------------------------------------------------------------------------

# cfn-lint's Lambda runtime rules compare the runtime's deprecation dates with today's date, so they
# would fail this suite from a date on (python3.11: deprecated 2027-06-30); deploy/README.md says so.
DATE_DEPENDENT_RULES = ["E2531", "W2531", "E2533"]


def lint_as_of_any_day(text: str) -> list:
    return lint(text, config=ManualArgs(regions=[REGION], ignore_checks=DATE_DEPENDENT_RULES))


def test_cfn_lint_finds_nothing_in_the_template():
    # Errors and warnings (cfn-lint's default): none. cfn-lint 1.x checks SAM resources against SAM's
    # schemas without running the transform; test_the_sam_transform_... lints the transform's output.
    matches = lint_as_of_any_day(TEMPLATE.read_text(encoding="utf-8"))
    assert [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in matches] == []


def test_cfn_lint_does_check_this_kind_of_template():
    # The same linter reports a broken copy: no silent pass because it skipped a SAM template.
    text = TEMPLATE.read_text(encoding="utf-8")
    broken = text.replace("Transform: AWS::Serverless-2016-10-31\n", "").replace("Principal: {Service", "Principl: {Service")
    assert broken != text
    rules = {m.rule.id for m in lint(broken, regions=[REGION])}
    assert "E3038" in rules  # Serverless resources without the Serverless transform
    assert "E3530" in rules  # a policy statement without its principal (or an unexpected property)


# --- 2. the function, its code and its environment ------------------------------------------------

def test_the_function_runs_this_repositorys_handler_from_the_bundle(stack: Stack):
    function = stack.properties("Function")
    assert function["Handler"] == "social_enrich.lambda_handler.handler"
    module, name = function["Handler"].rsplit(".", 1)
    assert callable(getattr(importlib.import_module(module), name))
    assert function["Runtime"] == "python3.11" and function["Architectures"] == ["x86_64"]
    # CodeUri is resolved relative to the template (sam deploy / aws cloudformation package): the
    # folder that deploy/lambda/build_bundle.py writes by default.
    assert (TEMPLATE.parent / function["CodeUri"]).resolve() == ROOT / "build" / "lambda"
    assert function["Role"] == stack.attributes["Role.Arn"]


def test_memory_timeout_and_concurrency_default_to_the_designed_values(template: dict[str, Any], stack: Stack):
    function = stack.properties("Function")
    assert function["MemorySize"] == 2048
    assert function["Timeout"] == 900
    assert function["ReservedConcurrentExecutions"] == 1  # one invocation paces itself to the whole quota
    assert function["EphemeralStorage"]["Size"] >= 1024
    parameters = template["Parameters"]
    assert parameters["Timeout"]["MaxValue"] <= LAMBDA_TIMEOUT_LIMIT
    assert parameters["ReservedConcurrency"]["MinValue"] >= 1  # 0 would disable the function
    assert function["Tracing"] != "Active"  # Active would need xray:PutTraceSegments on "*"
    assert function["EventInvokeConfig"]["MaximumRetryAttempts"] == 0  # a retry spends model money again
    assert function["LoggingConfig"] == {"LogFormat": "Text", "LogGroup": f"/aws/lambda/{STACK}"}
    log_group = stack.properties("LogGroup")
    assert log_group["LogGroupName"] == f"/aws/lambda/{STACK}" and log_group["RetentionInDays"] == 30


def test_the_environment_is_what_the_code_reads(stack: Stack, full_stack: Stack):
    env = stack.properties("Function")["Environment"]["Variables"]
    assert env == {
        "SOCIAL_ENRICH_ENV": "production",  # Azure OpenAI, never the local model
        "SOCIAL_ENRICH_HOME": "/tmp/social_enrich",
        "SOCIAL_ENRICH_CATALOG": json.dumps({"type": "glue", "client.region": REGION}),
        "SOCIAL_ENRICH_WAREHOUSE": "s3://lake/warehouse",
        "OPENAI_SECRET_NAME": SECRET,
        "AZURE_OPENAI_DEPLOYMENT": "gpt-4o-mini",
    }
    # Optional parameters left empty set no variable or property at all: the defaults apply.
    full = full_stack.properties("Function")["Environment"]["Variables"]
    assert set(full) - set(env) == {"AZURE_OPENAI_RPM", "AZURE_OPENAI_TPM"}
    assert (full["AZURE_OPENAI_RPM"], full["AZURE_OPENAI_TPM"]) == ("300", "50000")
    assert json.loads(full["SOCIAL_ENRICH_CATALOG"]) == {"type": "glue", "client.region": REGION, "glue.id": "210987654321"}

    # Every name is one the code reads: the profile, state folder, catalog, model secret, provider settings.
    code_vars = {environment.ENVIRONMENT_VAR, environment.STATE_DIR_VAR, environment.CATALOG_VAR, environment.WAREHOUSE_VAR,
                 credentials.SECRET_NAME_VAR, *environment.AZURE_SETTINGS_VARS.values()}
    assert set(full) <= code_vars
    assert env[environment.STATE_DIR_VAR].startswith("/tmp/")  # the only writable place in Lambda


def test_the_functions_environment_gives_the_glue_catalog_and_the_builtin_job(stack: Stack, monkeypatch: pytest.MonkeyPatch):
    """With the function's environment, the built-in job loads unchanged (no job folder of its own),
    the catalog is Glue with no endpoint or credential (the role's), and the databases are those the
    role is scoped to."""
    env = stack.properties("Function")["Environment"]["Variables"]
    for name, value in env.items():
        if name != environment.STATE_DIR_VAR:  # the state folder stays the test's own (conftest)
            monkeypatch.setenv(name, value)
    assert environment.resolved_catalog_properties(environment.catalog_choice()) == {
        "type": "glue", "client.region": REGION, "warehouse": "s3://lake/warehouse",
    }
    (job,) = discover_job_configs()
    assert job.path == environment.BUILTIN_JOBS_DIR / "sentiment" / "defs.yaml"
    assert {t.database for t in job.connector.source.tables} == {stack.values["GoldDatabase"]}
    assert job.connector.target.database == stack.values["TargetDatabase"]
    assert job.inference.model == "gpt-4o-mini"


def test_the_database_parameters_default_to_the_jobs_databases(template: dict[str, Any]):
    sources, target = job_databases()
    assert sources == {template["Parameters"]["GoldDatabase"]["Default"]}
    assert target == template["Parameters"]["TargetDatabase"]["Default"]


def test_the_only_way_in_over_http_is_post_job_signed_with_sigv4(stack: Stack):
    function = stack.properties("Function")
    assert "FunctionUrlConfig" not in function  # a function URL would be a second, unguarded door
    events = function["Events"]
    assert list(events) == ["PostJob"]
    event = events["PostJob"]
    assert event["Type"] == "Api"
    assert event["Properties"]["Path"] == "/{job}" and event["Properties"]["Method"].lower() == "post"
    assert event["Properties"]["RestApiId"] == stack.refs["Api"]
    assert "Auth" not in event["Properties"]  # so the API's default, AWS_IAM, applies
    assert event["Properties"]["TimeoutInMillis"] <= API_GATEWAY_TIMEOUT_MS
    api = stack.properties("Api")
    assert api["Auth"]["DefaultAuthorizer"] == "AWS_IAM"
    assert api["Auth"]["InvokeRole"] == "NONE"  # API Gateway invokes by resource policy, not as the caller


def test_the_outputs_name_what_dagster_and_callers_need(stack: Stack):
    outputs = {name: stack.resolve(body["Value"]) for name, body in stack.template["Outputs"].items()}
    assert outputs["FunctionArn"] == stack.attributes["Function.Arn"]  # execution.lambda.function_name
    assert outputs["ApiUrl"] == f"https://a1b2c3d4e5.execute-api.{REGION}.amazonaws.com/v1/"
    assert {"FunctionName", "RoleArn", "InvokerPolicyArn", "ApiCallerPolicyArn", "LogGroupName"} <= set(outputs)


# --- 3. the role: least privilege ------------------------------------------------------------------

EXPECTED_STATEMENTS = {
    # Sid: (actions, resources) for the required parameters only
    "WriteOwnLogs": ({"logs:CreateLogStream", "logs:PutLogEvents"},
                     {f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/{STACK}:*"}),
    "ReadModelSecret": ({"secretsmanager:GetSecretValue"}, {SECRET}),
    "WarehouseObjects": ({"s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"}, {"arn:aws:s3:::lake/warehouse/*"}),
    "WarehouseList": ({"s3:ListBucket"}, {"arn:aws:s3:::lake"}),
    "GlueRead": ({"glue:GetDatabases", "glue:GetDatabase", "glue:GetTable"},
                 {*glue_arns("gold", "*"), *glue_arns("enriched", "*")}),
    "GlueCreateTargetDatabase": ({"glue:CreateDatabase"}, set(glue_arns("enriched"))),
    "GlueWriteTargetTables": ({"glue:CreateTable", "glue:UpdateTable", "glue:DeleteTable"}, set(glue_arns("enriched", "*"))),
}


def by_sid(statements: list[dict[str, Any]]) -> dict[str, tuple[set[str], set[str]]]:
    sids = [s["Sid"] for s in statements]
    assert len(sids) == len(set(sids))
    return {s["Sid"]: (set(_listed(s["Action"])), set(_listed(s["Resource"]))) for s in statements}


def test_the_role_has_exactly_the_statements_the_function_needs(stack: Stack):
    statements = stack.role_statements()
    assert by_sid(statements) == EXPECTED_STATEMENTS
    listing = next(s for s in statements if s["Sid"] == "WarehouseList")
    assert listing["Condition"] == {"StringLike": {"s3:prefix": "warehouse/*"}}
    role = stack.properties("Role")
    assert "ManagedPolicyArns" not in role  # no *FullAccess, nor even AWSLambdaBasicExecutionRole ("*" resources)
    assert role["AssumeRolePolicyDocument"]["Statement"] == [
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ]


def test_optional_parameters_add_only_their_own_statements(stack: Stack, full_stack: Stack):
    statements = by_sid(full_stack.role_statements())
    other_catalog = "210987654321"
    assert statements.pop("DecryptModelSecret") == ({"kms:Decrypt"}, {ALL_OPTIONAL["SecretKmsKeyArn"]})
    assert statements.pop("WarehouseKms") == ({"kms:Decrypt", "kms:GenerateDataKey"}, {ALL_OPTIONAL["WarehouseKmsKeyArn"]})
    assert statements.pop("GoldObjects") == ({"s3:GetObject"}, {"arn:aws:s3:::gold-lake/tables/*"})
    assert statements.pop("WritePipesMessages") == ({"s3:PutObject"}, {"arn:aws:s3:::pipes-messages/*"})
    # A catalog in another account: the same Glue statements on that account's ARNs.
    expected = {sid: (actions, {r.replace(f":{ACCOUNT}:", f":{other_catalog}:") if ":glue:" in r else r for r in resources})
                for sid, (actions, resources) in EXPECTED_STATEMENTS.items()}
    assert statements == expected
    kms = {s["Sid"]: s["Condition"] for s in full_stack.role_statements() if s["Sid"] in ("DecryptModelSecret", "WarehouseKms")}
    assert kms == {"DecryptModelSecret": {"StringEquals": {"kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com"}},
                   "WarehouseKms": {"StringEquals": {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}}}


@pytest.mark.parametrize("which", ["required", "all optional"])
def test_no_wildcard_action_and_no_star_resource(which: str, stack: Stack, full_stack: Stack):
    chosen = stack if which == "required" else full_stack
    documents = [chosen.role_statements(), chosen.managed_policy_statements("InvokerPolicy"),
                 chosen.managed_policy_statements("ApiCallerPolicy")]
    for statement in (s for document in documents for s in document):
        assert statement["Effect"] == "Allow"
        for action in _listed(statement["Action"]):
            assert re.fullmatch(r"[a-z0-9-]+:[A-Za-z]+", action), f"{statement['Sid']}: wildcard or odd action {action!r}"
        for resource in _listed(statement["Resource"]):
            assert resource != "*" and resource.startswith("arn:aws:"), f"{statement['Sid']}: {resource!r}"
            service_and_account = resource.split(":")[2:5]
            assert "*" not in "".join(service_and_account), f"{statement['Sid']}: any region or account in {resource!r}"
    # IAM's limit for the inline policies of one role is 10,240 characters.
    assert len(json.dumps(chosen.properties("Role")["Policies"], separators=(",", ":"))) < 10_240


# Calls the function makes, as recorded at moto's Glue and S3 for a first run, a second run and a
# drop=true run of one day of the Glue sentiment job (pyiceberg 0.12, pyarrow's S3 filesystem), plus
# the secret and the logs. S3 multipart steps (CreateMultipartUpload, UploadPart, Complete) are all
# s3:PutObject to IAM; HeadObject is s3:GetObject.
GOLD_TABLES = ("fact_social_media_reaction_post", "dim_post_details")
TARGET_TABLE = "social_media_sentiment"
S3_CALLS = [
    ("s3:GetObject", f"arn:aws:s3:::lake/warehouse/gold.db/{GOLD_TABLES[0]}/metadata/00002-1f.metadata.json", {}),
    ("s3:GetObject", f"arn:aws:s3:::lake/warehouse/gold.db/{GOLD_TABLES[1]}/data/last_update_time_day=2026-11-01/0-1.parquet", {}),
    ("s3:GetObject", f"arn:aws:s3:::lake/warehouse/enriched.db/{TARGET_TABLE}/metadata/00000-c5.metadata.json", {}),
    ("s3:ListBucket", "arn:aws:s3:::lake",
     {"s3:prefix": f"warehouse/enriched.db/{TARGET_TABLE}/metadata/00001-09.metadata.json/"}),
    ("s3:PutObject", f"arn:aws:s3:::lake/warehouse/enriched.db/{TARGET_TABLE}/metadata/00001-09.metadata.json", {}),
    ("s3:PutObject", f"arn:aws:s3:::lake/warehouse/enriched.db/{TARGET_TABLE}/metadata/snap-41-0-cb.avro", {}),
    ("s3:PutObject", f"arn:aws:s3:::lake/warehouse/enriched.db/{TARGET_TABLE}/data/partition_date=2026-11-01/"
                     "written_at_year=2026/00000-0-cb.parquet", {}),
    ("s3:AbortMultipartUpload", f"arn:aws:s3:::lake/warehouse/enriched.db/{TARGET_TABLE}/data/x.parquet", {}),
]
GLUE_CALLS = [
    ("glue:GetDatabases", None, None),
    ("glue:GetDatabase", "enriched", None),
    ("glue:CreateDatabase", "enriched", None),  # first run only
    *[("glue:GetTable", "gold", table) for table in GOLD_TABLES],
    ("glue:GetTable", "enriched", TARGET_TABLE),
    ("glue:CreateTable", "enriched", TARGET_TABLE),
    ("glue:UpdateTable", "enriched", TARGET_TABLE),
    ("glue:DeleteTable", "enriched", TARGET_TABLE),  # drop=true only
]
LOG_STREAM = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/{STACK}:log-stream:2026/11/23/[$LATEST]0f1e"


def test_the_role_allows_every_call_the_function_makes(stack: Stack):
    statements = stack.role_statements()
    assert allows(statements, "secretsmanager:GetSecretValue", SECRET)
    assert allows(statements, "logs:CreateLogStream", LOG_STREAM) and allows(statements, "logs:PutLogEvents", LOG_STREAM)
    for action, resource, context in S3_CALLS:
        assert allows(statements, action, resource, context), (action, resource, context)
    for action, database, table in GLUE_CALLS:
        assert allows_glue(statements, action, database, table), (action, database, table)


def test_the_role_allows_nothing_next_to_those_calls(stack: Stack):
    statements = stack.role_statements()
    denied = [
        # another secret, also one whose name extends this one's
        ("secretsmanager:GetSecretValue", f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:prod/other-AbC123", {}),
        ("secretsmanager:GetSecretValue", f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:prod/openai-AbC123x", {}),
        ("secretsmanager:PutSecretValue", SECRET, {}),
        # outside the warehouse prefix, a prefix that only starts like it, another bucket
        ("s3:PutObject", "arn:aws:s3:::lake/elsewhere/enriched.db/x.parquet", {}),
        ("s3:PutObject", "arn:aws:s3:::lake/warehouse-old/x.parquet", {}),
        ("s3:PutObject", "arn:aws:s3:::other-bucket/warehouse/x.parquet", {}),
        ("s3:GetObject", "arn:aws:s3:::lake/secrets.txt", {}),
        # never delete: replaced files wait for table maintenance
        ("s3:DeleteObject", "arn:aws:s3:::lake/warehouse/enriched.db/x.parquet", {}),
        # listing the bucket outside the prefix, or all of it
        ("s3:ListBucket", "arn:aws:s3:::lake", {"s3:prefix": "elsewhere/"}),
        ("s3:ListBucket", "arn:aws:s3:::lake", {}),
        ("s3:ListBucket", "arn:aws:s3:::other-bucket", {"s3:prefix": "warehouse/x"}),
        # Pipes messages are off without the parameter
        ("s3:PutObject", "arn:aws:s3:::pipes-messages/abc/1.json", {}),
        # another log group
        ("logs:PutLogEvents", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/other:log-stream:x", {}),
    ]
    for action, resource, context in denied:
        assert not allows(statements, action, resource, context), (action, resource, context)
    glue_denied = [
        ("glue:CreateTable", "gold", "t"), ("glue:UpdateTable", "gold", GOLD_TABLES[0]),
        ("glue:DeleteTable", "gold", GOLD_TABLES[0]), ("glue:CreateDatabase", "gold", None),
        ("glue:DeleteDatabase", "enriched", None), ("glue:UpdateDatabase", "enriched", None),
        ("glue:GetTable", "other_db", "t"), ("glue:GetDatabase", "other_db", None),
        ("glue:CreateTable", "other_db", "t"),
    ]
    for action, database, table in glue_denied:
        assert not allows_glue(statements, action, database, table), (action, database, table)
    # A catalog of another account is not reachable without the GlueCatalogId parameter.
    assert not allows_glue(statements, "glue:GetTable", "gold", GOLD_TABLES[0], catalog_id="210987654321")


def test_pipes_messages_bucket_is_write_only_for_the_function_and_read_only_for_dagster(full_stack: Stack):
    role = full_stack.role_statements()
    assert allows(role, "s3:PutObject", "arn:aws:s3:::pipes-messages/AbCdEf/1.json")
    assert not allows(role, "s3:GetObject", "arn:aws:s3:::pipes-messages/AbCdEf/1.json")
    invoker = full_stack.managed_policy_statements("InvokerPolicy")
    assert by_sid(invoker) == {
        "InvokeFunction": ({"lambda:InvokeFunction"}, {full_stack.attributes["Function.Arn"]}),
        "ReadPipesMessages": ({"s3:GetObject"}, {"arn:aws:s3:::pipes-messages/*"}),
    }
    assert not allows(invoker, "lambda:InvokeFunction", f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:other")


def test_api_callers_may_post_jobs_on_this_api_only(stack: Stack):
    caller = stack.managed_policy_statements("ApiCallerPolicy")
    assert by_sid(caller) == {"CallPostJob": ({"execute-api:Invoke"}, {f"arn:aws:execute-api:{REGION}:{ACCOUNT}:a1b2c3d4e5/v1/POST/*"})}
    assert allows(caller, "execute-api:Invoke", f"arn:aws:execute-api:{REGION}:{ACCOUNT}:a1b2c3d4e5/v1/POST/sentiment")
    assert not allows(caller, "execute-api:Invoke", f"arn:aws:execute-api:{REGION}:{ACCOUNT}:a1b2c3d4e5/v1/GET/sentiment")
    assert not allows(caller, "execute-api:Invoke", f"arn:aws:execute-api:{REGION}:{ACCOUNT}:zzzzzzzzzz/v1/POST/sentiment")
    assert "InvokeFunction" in by_sid(stack.managed_policy_statements("InvokerPolicy"))
    assert "ReadPipesMessages" not in by_sid(stack.managed_policy_statements("InvokerPolicy"))


# --- 4. the SAM transform itself (needs aws-sam-translator, which cfn-lint 1.x no longer installs) ---

def test_the_sam_transform_gives_an_iam_guarded_api_and_lints_clean(template: dict[str, Any]):
    samtranslator = pytest.importorskip("samtranslator", reason="aws-sam-translator is not installed")
    from boto3.session import Session
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    sam = copy.deepcopy(template)
    # What `sam deploy` (or `aws cloudformation package`) does first: upload CodeUri, point at the object.
    sam["Resources"]["Function"]["Properties"]["CodeUri"] = "s3://artifacts/social-enrich.zip"
    translator = Translator(None, Parser(), boto_session=Session(region_name=REGION))  # no AWS call
    cfn = translator.translate(sam, {**REQUIRED, "AWS::AccountId": ACCOUNT, "AWS::StackName": STACK},
                               get_managed_policy_map=lambda: {})
    assert samtranslator.__version__

    resources = cfn["Resources"]
    by_type: dict[str, list[str]] = {}
    for name, body in resources.items():
        by_type.setdefault(body["Type"], []).append(name)
    assert by_type["AWS::Lambda::Function"] == ["Function"]
    assert by_type["AWS::IAM::Role"] == ["Role"]  # SAM made no role of its own
    function = resources["Function"]["Properties"]
    assert function["Handler"] == "social_enrich.lambda_handler.handler" and function["Runtime"] == "python3.11"
    assert function["Role"] == {"Fn::GetAtt": ["Role", "Arn"]}

    (api_name,) = by_type["AWS::ApiGateway::RestApi"]
    body = resources[api_name]["Properties"]["Body"]
    assert list(body["paths"]) == ["/{job}"] and list(body["paths"]["/{job}"]) == ["post"]
    method = body["paths"]["/{job}"]["post"]
    assert method["security"] == [{"AWS_IAM": []}]
    assert body["securityDefinitions"]["AWS_IAM"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    integration = method["x-amazon-apigateway-integration"]
    assert integration["type"] == "aws_proxy" and "credentials" not in integration
    assert integration["timeoutInMillis"] <= API_GATEWAY_TIMEOUT_MS
    (permission,) = (resources[name]["Properties"] for name in by_type["AWS::Lambda::Permission"])
    assert permission["Principal"] == "apigateway.amazonaws.com" and permission["Action"] == "lambda:InvokeFunction"
    assert "/POST/" in json.dumps(permission["SourceArn"])
    (invoke_config,) = (resources[name]["Properties"] for name in by_type["AWS::Lambda::EventInvokeConfig"])
    assert invoke_config["MaximumRetryAttempts"] == 0

    # The plain CloudFormation the transform produced passes cfn-lint too (resource schemas of Lambda,
    # API Gateway and IAM, which are stricter than SAM's).
    matches = lint_as_of_any_day(json.dumps(cfn))
    assert [f"{m.rule.id} {m.message}" for m in matches] == []
