#!/usr/bin/env bash
# The deploy path, checked offline (tests/run.sh runs this; it also runs alone):
#   - infra/template.yaml's parameter patterns, its SAM expansion (tests/infra_check.py);
#   - cfn-lint on the template and on the expansion; checkov on both;
#   - `cargo lambda build --release --arm64` of the six functions, their zipped sizes written to
#     target/lambda/sizes.md (recorded in docs/function-sizes.md), then `sam build` of the
#     template, which must package those very binaries and write under 51,200 bytes;
#   - the six binaries (debug, with `cargo test`'s features) on `cargo lambda watch`, invoked with the
#     samples in events/.
# The template's contents against the code are tested by tests/infra_template.rs (cargo test).
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/venv.sh

step "cfn-lint, aws-sam-translator, checkov in .venv-infra/ from tests/infra-requirements.txt"
venv .venv-infra tests/infra-requirements.txt
bin=.venv-infra/bin

step "template parameters, SAM expansion"
"$bin/python" tests/infra_check.py patterns
"$bin/python" tests/infra_check.py expand target/infra/expanded.json
step "the expansion's HTTP routes (each admitted by an invoke permission of its function)"
"$bin/python" tests/infra_check.py routes target/infra/expanded.json

step "cfn-lint (the template, then its expansion: cfn-lint does not look inside AWS::Serverless::*)"
"$bin/cfn-lint" infra/template.yaml
"$bin/cfn-lint" target/infra/expanded.json

step "checkov (skips are justified in the template)"
"$bin/checkov" -f infra/template.yaml --framework cloudformation --skip-download --compact --quiet
"$bin/checkov" -f target/infra/expanded.json --framework cloudformation --skip-download --compact --quiet

step "aws-sam-cli, cargo-lambda, zig in .venv-sam/ from tests/sam-requirements.txt"
venv .venv-sam tests/sam-requirements.txt
export PATH="$PWD/.venv-sam/bin:$PATH" SAM_CLI_TELEMETRY=0

step "cargo lambda build --release --arm64, the six functions as sam build builds each"
rustup target list --installed | grep -q '^aarch64-unknown-linux-gnu$' || rustup target add aarch64-unknown-linux-gnu
functions=(connections-api oauth-callback token-lookup token-refresh token-revoke webhook-deliver)
# In one cargo command, so that their fat-LTO links (a minute or more each, on one core) run side
# by side. The six packages have the same dependencies and features, so each binary is the one
# `sam build` makes in that function's directory alone: the `cmp` below checks it, and `sam build`
# finds every binary built.
packages=()
for f in "${functions[@]}"; do packages+=(-p "$f"); done
(cd functions/connections-api && cargo lambda build --release --arm64 --locked "${packages[@]}")
{
    echo "| function | zip (KiB) | bootstrap (KiB) |"
    echo "|---|---:|---:|"
    for f in "${functions[@]}"; do
        "$bin/python" - "$f" <<'PY'
import io, sys, zipfile
f = sys.argv[1]
path = f"target/lambda/{f}/bootstrap"
data = open(path, "rb").read()
# An arm64 Linux executable: ELF, e_machine 183 (AArch64).
assert data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == 183, f"{path}: not an arm64 ELF"
# Issue 15: under 10 MB and without the embedded backend (SQLite's file header string);
# docs/function-sizes.md says how.
assert len(data) < 10_000_000, f"{path}: {len(data):,} bytes, not under 10 MB (docs/function-sizes.md)"
assert b"SQLite format 3" not in data, f"{path}: links SQLite (latchkey's `embedded` feature is on)"
# ...and with the refusal of LATCHKEY_BACKEND=embedded that such a build has instead: the text of
# embedded_not_built's reason (shared/src/config/wiring.rs; cargo test checks that error), which
# survives LTO only where the branch returning it is linked.
refusal = (b"embedded is not in this build (built without latchkey's `embedded` feature, as the Lambda "
           b"functions are): use aws")
assert refusal in data, f"{path}: lacks the refusal of LATCHKEY_BACKEND=embedded (embedded_not_built)"
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    z.write(path, "bootstrap")
print(f"| {f} | {len(buf.getvalue()) // 1024} | {len(data) // 1024} |")
PY
    done
} > target/lambda/sizes.md
cat target/lambda/sizes.md

step "sam build (the README's deploy build: rust-cargolambda for every function)"
sam build --beta-features --template-file infra/template.yaml --build-dir target/sam-build
for f in "${functions[@]}"; do
    logical=$(echo "$f" | sed -E 's/(^|-)([a-z])/\U\2/g')Function
    cmp -s "target/sam-build/$logical/bootstrap" "target/lambda/$f/bootstrap" \
        || { echo "sam build did not package $f's arm64 binary as $logical" >&2; exit 1; }
done
echo "template sizes in bytes (CloudFormation's inline limit is 51,200; see infra/README.md):"
wc -c infra/template.yaml target/sam-build/template.yaml
# What sam deploy sends is the built template, not infra/template.yaml.
built=$(wc -c < target/sam-build/template.yaml)
if (( built >= 51200 )); then
    echo "target/sam-build/template.yaml is $built bytes: CloudFormation takes at most 51,200 inline;" \
        "shorten infra/template.yaml or deploy it by S3 URL (infra/README.md, Size)" >&2
    exit 1
fi

step "the six binaries on cargo lambda watch, fed the samples in events/ with cargo lambda invoke"
build_binaries
python3 tests/lambda_invoke.py embedded
python3 tests/lambda_invoke.py aws
