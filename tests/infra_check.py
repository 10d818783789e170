"""Offline checks of infra/template.yaml, run by tests/infra.sh with the tools of
tests/infra-requirements.txt:

1. the SAM expansion: samtranslator turns every AWS::Serverless::* resource into plain
   CloudFormation (cfn-lint does not look inside SAM resources), written to
   target/infra/expanded.json for cfn-lint;
2. the rules CloudFormation and EventBridge enforce but moto does not: the schedule parameter's
   pattern accepts what EventBridge accepts and refuses what it refuses;
3. the HTTP routes of an expansion, one JSON line each (route key, authorization, authorizer,
   target function, payload version, timeout, and the invoke permission that admits it), from
   AWS::ApiGatewayV2::Route resources or from the OpenAPI body SAM writes for HttpApi events:
   two expansions route alike when these lines are equal. Then every operation of
   shared/openapi.json must reach its function through the route API Gateway picks for it (the
   most specific: catch-alls like ANY /v1/{proxy+} serve what no explicit route does), public
   exactly when the operation is (`security: []`).

Usage: python tests/infra_check.py expand OUT.json | patterns | routes EXPANDED.json
"""

import fnmatch
import json
import os
import re
import sys

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

TEMPLATE = os.path.join(os.path.dirname(__file__), "..", "infra", "template.yaml")
OPENAPI = os.path.join(os.path.dirname(__file__), "..", "shared", "openapi.json")
# The operations the oauth-callback function serves; connections-api serves every other.
CALLBACK_OPERATIONS = {"GET /v1/oauth/callback"}


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


def _function_of(uri):
    """The logical id of the function an integration URI names (`!GetAtt F.Arn`, or SAM's
    `!Sub ...${F.Arn}/invocations`)."""
    if "Fn::GetAtt" in uri:
        return uri["Fn::GetAtt"][0]
    match = re.search(r"\$\{(\w+)\.Arn\}", json.dumps(uri))
    return match.group(1) if match else json.dumps(uri)


def _jwt(identity_source, config):
    """A JWT authorizer, its keys as CloudFormation and OpenAPI spell them alike."""
    sources = identity_source if isinstance(identity_source, list) else [identity_source]
    lower = {k.lower(): v for k, v in config.items()}
    return {"identity": sources, "issuer": lower.get("issuer"), "audience": lower.get("audience")}


def _permitted(resources, function, method, path):
    """Whether an apigateway.amazonaws.com invoke permission of `function` admits `method path`
    on the stack's API (its SourceArn's pattern after `${HttpApi}/STAGE/`)."""
    for r in resources.values():
        p = r.get("Properties", {})
        if r["Type"] != "AWS::Lambda::Permission" or p.get("Principal") != "apigateway.amazonaws.com":
            continue
        if p.get("FunctionName") != {"Ref": function}:
            continue
        sub = p["SourceArn"]["Fn::Sub"]
        arn = sub[0] if isinstance(sub, list) else sub
        api = "${__ApiId__}" if isinstance(sub, list) else "${HttpApi}"
        tail = arn.split(api + "/", 1)[1].split("/", 1)  # STAGE, then METHOD/PATH or *
        pattern = tail[1] if len(tail) > 1 else "*"
        if fnmatch.fnmatchcase(f"{method}{path}", pattern.replace("${__Stage__}", "*")):
            return True
    return False


def routes(path):
    with open(path) as f:
        resources = json.load(f)["Resources"]
    out = []
    for r in resources.values():
        p = r.get("Properties", {})
        if r["Type"] == "AWS::ApiGatewayV2::Route":
            target = re.search(r"integrations/\$\{(\w+)\}", p["Target"]["Fn::Sub"]).group(1)
            integration = resources[target]["Properties"]
            authorizer = None
            if p["AuthorizationType"] == "JWT":
                a = resources[p["AuthorizerId"]["Ref"]]["Properties"]
                authorizer = _jwt(a["IdentitySource"], a["JwtConfiguration"])
            method, route_path = p["RouteKey"].split(" ", 1)
            out.append({"route": p["RouteKey"], "authorization": p["AuthorizationType"], "authorizer": authorizer,
                        "function": _function_of(integration["IntegrationUri"]),
                        "payload": integration["PayloadFormatVersion"], "timeout": integration.get("TimeoutInMillis")})
        elif r["Type"] == "AWS::ApiGatewayV2::Api" and "Body" in p:
            body = p["Body"]
            schemes = body.get("components", {}).get("securitySchemes", {})
            for route_path, item in body["paths"].items():
                for method, op in item.items():
                    if method == "parameters":
                        continue
                    integration = op["x-amazon-apigateway-integration"]
                    (name,) = [k for s in op.get("security", [{"NONE": []}]) for k in s] or ["NONE"]
                    authorizer = None
                    if name != "NONE":
                        a = schemes[name]["x-amazon-apigateway-authorizer"]
                        assert a["type"] == "jwt", name
                        authorizer = _jwt(a["identitySource"], a["jwtConfiguration"])
                    out.append({"route": f"{method.upper()} {route_path}",
                                "authorization": "NONE" if name == "NONE" else "JWT", "authorizer": authorizer,
                                "function": _function_of(integration["uri"]),
                                "payload": integration["payloadFormatVersion"],
                                "timeout": integration.get("timeoutInMillis")})
    for route in out:
        method, route_path = route["route"].split(" ", 1)
        route["permitted"] = _permitted(resources, route["function"], method, route_path)
    for route in sorted(out, key=lambda r: r["route"]):
        print(json.dumps(route, sort_keys=True))
    refused = [r["route"] for r in out if not r["permitted"]]
    if refused:
        sys.exit(f"no invoke permission admits API Gateway to these routes' functions: {refused}")
    operations_reach_their_functions(out)


def _matches(route_key, method, path):
    """How specifically `route_key` (METHOD /path, ANY spelled as SAM's body spells it too)
    matches `method path`: None when it does not; else a key that sorts a more specific match
    higher, as API Gateway prefers it: no greedy variable over a greedy one, then segment by
    segment a literal over a variable, then a named method over ANY."""
    route_method, route_path = route_key.split(" ", 1)
    any_method = route_method in ("ANY", "X-AMAZON-APIGATEWAY-ANY-METHOD")
    if not any_method and route_method != method:
        return None
    want, have = route_path.strip("/").split("/"), path.strip("/").split("/")
    scores = []
    for i, segment in enumerate(want):
        if segment.startswith("{") and segment.endswith("+}"):
            if i != len(want) - 1 or len(have) <= i:
                return None
            return (0, scores, not any_method)
        if i >= len(have):
            return None
        if segment.startswith("{") and segment.endswith("}"):
            scores.append(1)
        elif segment == have[i]:
            scores.append(2)
        else:
            return None
    if len(want) != len(have):
        return None
    return (1, scores, not any_method)


def operations_reach_their_functions(routes_out):
    with open(OPENAPI) as f:
        paths = json.load(f)["paths"]
    problems, count = [], 0
    for path, item in paths.items():
        for method, op in item.items():
            if method not in ("get", "put", "post", "patch", "delete"):
                continue
            count += 1
            key = f"{method.upper()} {path}"
            # A concrete request of the operation: each {parameter} a value.
            concrete = re.sub(r"\{[^}]+\}", "sample", path)
            candidates = [(m, r) for r in routes_out if (m := _matches(r["route"], method.upper(), concrete))]
            if not candidates:
                problems.append(f"{key}: no route")
                continue
            route = max(candidates, key=lambda c: c[0])[1]
            public = op.get("security") == []
            function = "OauthCallbackFunction" if key in CALLBACK_OPERATIONS else "ConnectionsApiFunction"
            if (route["authorization"] == "NONE") != public:
                problems.append(f"{key}: {route['route']} is {route['authorization']}, the operation is "
                                f"{'public' if public else 'authorized'}")
            if route["function"] != function or not route["permitted"]:
                problems.append(f"{key}: {route['route']} reaches {route['function']}, not {function}")
    if problems:
        sys.exit("operations the deployed routes do not serve as documented:\n" + "\n".join(problems))
    print(f"every operation of shared/openapi.json ({count}) reaches its function through its route")


if __name__ == "__main__":
    if sys.argv[1:2] == ["expand"]:
        expand(sys.argv[2])
    elif sys.argv[1:2] == ["patterns"]:
        patterns()
    elif sys.argv[1:2] == ["routes"]:
        routes(sys.argv[2])
    else:
        sys.exit(__doc__)
