"""Small real applications the integration tests run as subprocesses behind Envoy.

    python -m tests.apps.echo_http --port P [--name SERVICE] [--host 127.0.0.1]
    python -m tests.apps.echo_tcp  --port P [--banner NAME]  [--host 127.0.0.1]

`tests.apps.runner` starts and stops them (`start_app`, the `app_factory` fixture).
"""
