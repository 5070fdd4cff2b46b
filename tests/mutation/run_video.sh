#!/usr/bin/env bash
# Mutation testing of the video reader (xnn/video/io.py) and the Ray engine (xnn/engines/ray.py),
# in a scratch copy of the checkout, so it never touches the core-maths run's mutants/ or config.
# Not part of CI (docs/testing.md).
#
#   tests/mutation/run_video.sh io        # xnn/video/io.py against the decoding and video I/O tests
#   tests/mutation/run_video.sh ray       # xnn/engines/ray.py's pool sizing, addresses and messages (the pure
#                                         # functions) against the Ray tests that need no cluster; the rest of
#                                         # the file needs a Ray cluster per mutant (about 25 s each)
#   tests/mutation/run_video.sh io ray    # both (one after the other)
#
# The copy's pyproject.toml gets its own [tool.mutmut]: only that module is mutated, and only the
# tests named below run (the end-to-end video runs would cover the same lines at 10x the cost).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v mutmut >/dev/null || { echo "pip install mutmut  (3.x)" >&2; exit 2; }
export XNN_HOME="${XNN_HOME:-$(cd .. && pwd)/shared/data}"
repo=$(pwd)
for target in "${@:-io}"; do
    case "$target" in
        io)  module="xnn/video/io.py"
             tests='"tests/test_video_decoding.py", "tests/test_video_io_contract.py", "tests/test_video.py::test_probe_and_seek_read_the_same_frames",
    "tests/test_video.py::test_a_rotated_or_mirrored_video_is_read_as_shown", "tests/test_video.py::test_gif_input",
    "tests/test_video.py::test_join_segments_keeps_frames_order_and_audio",
    "tests/test_video.py::test_webm_output_reencodes_the_audio", "tests/test_video.py::test_odd_sizes_are_written_in_full_chroma"'
             deselect="spoilt"
             names=() ;;
        ray) module="xnn/engines/ray.py"
             tests='"tests/test_ray_layouts.py", "tests/test_ray.py"'
             deselect="cluster or on_ray or loopback"
             names=()
             for f in plan_pool _cpu_plan _gpu_plan node_resources describe_cluster waited_for wait_s host_port \
                      starts_local_ray on_loopback; do names+=("xnn.engines.ray.x_${f}__mutmut_*"); done ;;
        *)   echo "unknown target $target (io or ray)" >&2; exit 2 ;;
    esac
    work="${TMPDIR:-/tmp}/xnn-mutation-$target"
    rm -rf "$work" && mkdir -p "$work"
    git ls-files -z -co --exclude-standard | xargs -0 cp --parents -t "$work"
    cd "$work"
    python3 - "$module" "$tests" "$deselect" <<'EOF'
import re, sys
module, tests, deselect = sys.argv[1:]
text = open("pyproject.toml").read()
block = f'''[tool.mutmut]
source_paths = ["xnn"]
only_mutate = ["{module}"]
also_copy = ["examples", "configs"]
pytest_add_cli_args_test_selection = [{tests}]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:randomly", "-k", "not ({deselect})"]
process_isolation = "forkserver"
'''
text = re.sub(r"\[tool\.mutmut\].*?(?=\n\[|\Z)", block, text, flags=re.S)
open("pyproject.toml", "w").write(text)
EOF
    echo "== mutmut over $module in $work"
    mutmut run "${names[@]}" || true
    mutmut results --all true 2>/dev/null | python3 "$repo/tests/mutation/score.py"
    cd "$repo"
done
