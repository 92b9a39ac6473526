"""`martinet web`: the dashboard (pip install 'martinet[web]'). See app.py."""
