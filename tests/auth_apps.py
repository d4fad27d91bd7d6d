"""APP functions for the auth tests (``python -m minisoup auth_apps:NAME``)."""

import minisoup

REALM = "workers"
USER, PASSWORD = "bob", "s3cret-PW"


def digest(server):
    """``/d``: a Digest domain (``bob``/``s3cret-PW``) over a handler that answers
    ``"WORKER_ID USER"``, so a test can tell which worker accepted which request."""
    stored = minisoup.AuthDomainDigest.encode_password(USER, REALM, PASSWORD)
    domain = minisoup.AuthDomainDigest(
        REALM, lambda domain_, msg, username, data: stored if username == USER else None)
    domain.add_path("/d")
    server.add_auth_domain(domain)  # before run(): the nonce secret is made before the fork
    server.add_handler("/d", _whoami)


def _whoami(server, msg, path, query, user_data):
    msg.set_status(200)
    msg.set_response("text/plain", "%d %s" % (server.get_worker_id(), msg.get_auth_user()))
