"""Offline checks of infra/template.yaml, run by tests/infra.sh with the tools of
tests/infra-requirements.txt:

1. the SAM expansion: samtranslator turns every AWS::Serverless::* resource into plain
   CloudFormation (cfn-lint does not look inside SAM resources), written to
   target/infra/expanded.json for cfn-lint;
2. the rules CloudFormation and EventBridge enforce but moto does not: the schedule parameter's
   pattern accepts what EventBridge accepts and refuses what it refuses.

Usage: python tests/infra_check.py expand OUT.json | python tests/infra_check.py patterns
"""

import json
import os
import re
import sys

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

TEMPLATE = os.path.join(os.path.dirname(__file__), "..", "infra", "template.yaml")


class NoManagedPolicies:
    """The translator asks IAM for managed policy ARNs only when a function names one; ours
    name none (every role is written out), so any lookup is a mistake."""

    def load(self):
        return {}


def expand(out):
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with open(TEMPLATE) as f:
        template = yaml_parse(f.read())
    # `sam build` replaces each local CodeUri with the built artifact in S3; so does this.
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = "s3://latchkey-artifacts/placeholder.zip"
    expanded = transform(template, {}, NoManagedPolicies())
    leftover = [n for n, r in expanded["Resources"].items() if r["Type"].startswith("AWS::Serverless::")]
    if leftover:
        sys.exit(f"not expanded: {leftover}")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(expanded, f, indent=1, default=str)
    print(f"expanded {len(template['Resources'])} resources into {len(expanded['Resources'])}: {out}")


def patterns():
    with open(TEMPLATE) as f:
        params = yaml_parse(f.read())["Parameters"]

    def check(name, good, bad):
        pattern = re.compile(params[name]["AllowedPattern"])
        for v in good:
            assert pattern.fullmatch(v), f"{name} should accept {v!r}"
        for v in bad:
            assert not pattern.fullmatch(v), f"{name} should refuse {v!r}"

    # EventBridge's schedule grammar (moto accepts any string, so this is where it is checked).
    check(
        "RefreshSchedule",
        ["rate(5 minutes)", "rate(1 minute)", "rate(1 hour)", "rate(12 hours)", "rate(10 minutes)",
         "cron(0/5 * * * ? *)"],
        ["rate(5 minute)", "rate(1 minutes)", "rate(0 minutes)", "rate(5 min)", "rate(05 minutes)",
         "every 5 minutes", "rate(5 minutes) ", "", "cron()", "rate(-1 minutes)"],
    )
    # An origin only: the API is mapped at the domain's root, so a path would break every route.
    check("PublicUrl", ["", "https://auth.example.com", "https://auth.example.com:8443"],
          ["http://auth.example.com", "auth.example.com", "https://", "https://a b.com",
           "https://example.com/latchkey", "https://auth.example.com/"])
    check("JwtIssuer", ["https://issuer.example.com/", "https://example.auth0.com/"],
          ["", "http://issuer.example.com", "issuer"])
    check("AlarmTopicArn", ["", "arn:aws:sns:eu-west-1:123456789012:alerts"],
          ["alerts", "arn:aws:sqs:eu-west-1:123456789012:alerts", "arn:aws:sns:eu-west-1:1234:alerts"])
    print("parameter patterns: ok")


if __name__ == "__main__":
    if sys.argv[1:2] == ["expand"]:
        expand(sys.argv[2])
    elif sys.argv[1:2] == ["patterns"]:
        patterns()
    else:
        sys.exit(__doc__)
