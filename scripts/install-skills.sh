#!/usr/bin/env bash
# Make the project's agent skills (skills/*/SKILL.md) visible to coding agents by symlinking each
# skill directory into the places they look:
#   .claude/skills/<name>   Claude Code (project skills)
#   .agents/skills/<name>   Codex and other agents following the open agent-skills layout
# With --user, link into ~/.claude/skills and ~/.agents/skills instead (every project).
# Safe to run again: existing links are replaced, real directories of the same name are left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
targets=(".claude/skills" ".agents/skills")
if [ "${1:-}" = "--user" ]; then
  targets=("$HOME/.claude/skills" "$HOME/.agents/skills")
elif [ -n "${1:-}" ]; then
  echo "usage: bash scripts/install-skills.sh [--user]" >&2
  exit 2
fi
for target in "${targets[@]}"; do
  mkdir -p "$target"
  for skill in skills/*/; do
    name="$(basename "$skill")"
    [ -f "$skill/SKILL.md" ] || continue
    link="$target/$name"
    if [ -e "$link" ] && [ ! -L "$link" ]; then
      echo "skip $link: a real directory is there (remove it to link the project's skill)" >&2
      continue
    fi
    ln -sfn "$repo/skills/$name" "$link"
    echo "linked $link -> skills/$name"
  done
done
