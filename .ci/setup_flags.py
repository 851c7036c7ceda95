"""Prints a flag list assigned in setup.py (e.g. SANITIZE_CXX_FLAGS), space-separated, without running setup.py:
the CI scripts build with the very flags the extension gets."""
import ast
import os
import sys

SETUP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")

for node in ast.parse(open(SETUP).read()).body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == sys.argv[1] for t in node.targets):
        print(" ".join(ast.literal_eval(node.value)))
        break
else:
    sys.exit(f"setup_flags: no list {sys.argv[1]} in setup.py")
