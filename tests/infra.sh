#!/usr/bin/env bash
# The deploy path, checked offline (tests/run.sh runs this; it also runs alone):
#   - infra/template.yaml's parameter patterns, its SAM expansion (tests/infra_check.py);
#   - cfn-lint on the template and on the expansion; checkov on both;
#   - `cargo lambda build --release --arm64` of the five functions, zipped as Lambda takes them,
#     with their sizes written to target/lambda/sizes.md (recorded in docs/function-sizes.md).
# The template's contents against the code are tested by tests/infra_template.rs (cargo test).
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/venv.sh

echo "==> cfn-lint, aws-sam-translator, checkov, cargo-lambda, zig in .venv-infra/ from tests/infra-requirements.txt"
venv .venv-infra tests/infra-requirements.txt
bin=.venv-infra/bin

echo "==> template parameters, SAM expansion"
"$bin/python" tests/infra_check.py patterns
"$bin/python" tests/infra_check.py expand target/infra/expanded.json

echo "==> cfn-lint (the template, then its expansion: cfn-lint does not look inside AWS::Serverless::*)"
"$bin/cfn-lint" infra/template.yaml
"$bin/cfn-lint" target/infra/expanded.json

echo "==> checkov (skips are justified in the template)"
"$bin/checkov" -f infra/template.yaml --framework cloudformation --skip-download --compact --quiet
"$bin/checkov" -f target/infra/expanded.json --framework cloudformation --skip-download --compact --quiet

echo "==> cargo lambda build --release --arm64 (the five functions, zip packages)"
rustup target list --installed | grep -q '^aarch64-unknown-linux-gnu$' || rustup target add aarch64-unknown-linux-gnu
functions=(connections-api oauth-callback token-lookup token-refresh token-revoke)
PATH="$PWD/$bin:$PATH" cargo lambda build --release --arm64 --locked --output-format zip \
    $(printf -- '-p %s ' "${functions[@]}")
{
    echo "| function | zip (KiB) | bootstrap (KiB) |"
    echo "|---|---:|---:|"
    for f in "${functions[@]}"; do
        zip=target/lambda/$f/bootstrap.zip
        [ -s "$zip" ] || { echo "missing $zip" >&2; exit 1; }
        unzipped=$("$bin/python" -c 'import sys, zipfile; print(sum(i.file_size for i in zipfile.ZipFile(sys.argv[1]).infolist()))' "$zip")
        echo "| $f | $(( $(stat -c %s "$zip") / 1024 )) | $(( unzipped / 1024 )) |"
    done
} > target/lambda/sizes.md
cat target/lambda/sizes.md
