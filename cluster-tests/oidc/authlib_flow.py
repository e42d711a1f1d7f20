#!/usr/bin/env python3
"""Runs the OIDC authorization code flow against the agency with Authlib, an
OIDC client library written elsewhere: PKCE (S256), the code by query,
client_secret_basic at the token endpoint, ID token validated through
discovery and JWKS, then the userinfo endpoint.

The script plays the browser itself: it sends the agency's cookies with the
authorization request (Authlib's defaults: no response_mode) and reads the code
from the redirect to the site's redirect URI.

    authlib_flow.py --issuer URL --discovery-base URL --client-id ID
        --client-secret S --redirect-uri URI --sso-cookie "NAME=VALUE; NAME=VALUE"
        --ca-file ca.pem [--resolve HOST=IP ...] [--id-token-alg ALG]

`--id-token-alg` is the algorithm the client registered
(id_token_signed_response_alg, default RS256): the ID token is decoded
accepting only that one, as a relying party should.

`--resolve HOST=IP` connects to IP whenever a URL names HOST, while TLS still
verifies the certificate against HOST and `--ca-file` (like curl's --resolve).

Prints one JSON line: {"ok": true, "sub", "preferred_username", "sid"} and
exits 0, or {"ok": false, "error": ...} and exits 1. Codes, tokens and secrets
are never printed. `--self-test` checks the offline parts and needs no agency.
"""

import argparse
import base64
import json
import sys
import warnings
from urllib.parse import parse_qsl, urlsplit

TIMEOUT_SECONDS = 30


class FlowError(Exception):
    """A step of the flow did not go as the protocol says."""


def parse_redirect(location, redirect_uri, state, issuer):
    """Returns the authorization code from the redirect to the site (the code
    in the query, OIDC Core 3.1.2.5) after checking that it goes to
    `redirect_uri` with the expected `state` (and `iss`, when the agency sends
    one, RFC 9207)."""
    parts = urlsplit(location)
    target = f"{parts.scheme}://{parts.netloc}{parts.path}"
    if target != redirect_uri:
        raise FlowError(f"redirected to {target!r}, not the redirect URI {redirect_uri!r}")
    fields = dict(parse_qsl(parts.query))
    if "error" in fields:
        raise FlowError(
            f"authorization error {fields['error']!r}: {fields.get('error_description', '')!r}"
        )
    if fields.get("state") != state:
        raise FlowError("the redirect's state does not match the request's state")
    if "iss" in fields and fields["iss"] != issuer:
        raise FlowError(f"the redirect's iss {fields['iss']!r} is not the issuer {issuer!r}")
    code = fields.get("code", "")
    if not code:
        raise FlowError("the redirect carries no code")
    return code


def parse_resolve(entries):
    """`["host=ip", ...]` -> {host: ip}."""
    out = {}
    for entry in entries:
        host, sep, ip = entry.partition("=")
        if not sep or not host or not ip:
            raise FlowError(f"--resolve wants HOST=IP, got {entry!r}")
        out[host.lower()] = ip
    return out


def install_resolve(mapping):
    """Makes urllib3 (under requests and Authlib) connect to the mapped IPs; the
    URL's host name still drives SNI and certificate verification."""
    if not mapping:
        return
    import urllib3.util.connection as connection

    original = connection.create_connection

    def create_connection(address, *args, **kwargs):
        host, port = address
        return original((mapping.get(host.lower(), host), port), *args, **kwargs)

    connection.create_connection = create_connection


def redact(text, secrets):
    for s in secrets:
        if s:
            text = text.replace(s, "<redacted>")
    return text


def redirect_location(resp):
    """The Location of a redirect without its query and fragment (which may
    carry a code)."""
    loc = resp.headers.get("Location", "")
    parts = urlsplit(loc)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.netloc else parts.path


def run(args, secrets):
    import requests
    from authlib.common.security import generate_token
    from authlib.integrations.requests_client import OAuth2Session

    # Authlib 1.x warns that authlib.jose will move to joserfc in 2.0; the
    # OIDC claims classes used here are built on it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from authlib.jose import JsonWebKey, JsonWebToken
        from authlib.oidc.core import CodeIDToken

    install_resolve(parse_resolve(args.resolve))

    # trust_env off: REQUESTS_CA_BUNDLE would otherwise replace the session's CA
    # file, and proxy variables would catch loopback connections.
    http = requests.Session()
    http.trust_env = False
    tls = {"verify": args.ca_file, "timeout": TIMEOUT_SECONDS}

    url = args.discovery_base.rstrip("/") + "/.well-known/openid-configuration"
    resp = http.get(url, **tls)
    if resp.status_code != 200:
        raise FlowError(f"discovery {url}: HTTP {resp.status_code}")
    meta = resp.json()
    if meta.get("issuer") != args.issuer:
        raise FlowError(f"discovery issuer {meta.get('issuer')!r} is not {args.issuer!r}")
    for key in ("authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint"):
        if not meta.get(key):
            raise FlowError(f"discovery lacks {key}")
    if "form_post" not in meta.get("response_modes_supported", ["query", "fragment"]):
        raise FlowError("discovery does not list response_mode form_post")
    if "S256" not in meta.get("code_challenge_methods_supported", []):
        raise FlowError("discovery does not list code_challenge_method S256")

    client = OAuth2Session(
        args.client_id,
        args.client_secret,
        scope="openid profile email",
        redirect_uri=args.redirect_uri,
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic",
    )
    client.trust_env = False
    code_verifier = generate_token(48)
    nonce = generate_token(24)
    secrets.append(code_verifier)
    # Authlib's defaults: no response_mode, so the code comes in the query.
    auth_url, state = client.create_authorization_url(
        meta["authorization_endpoint"],
        code_verifier=code_verifier,
        nonce=nonce,
    )

    # The browser's part: the user already has an SSO session (cookie).
    resp = http.get(auth_url, headers={"Cookie": args.sso_cookie}, allow_redirects=False, **tls)
    if resp.status_code not in (302, 303):
        raise FlowError(
            f"authorization endpoint answered HTTP {resp.status_code}, "
            "expected a redirect to the site with the code"
        )
    code = parse_redirect(resp.headers.get("Location", ""), args.redirect_uri, state, args.issuer)
    secrets.append(code)

    token = client.fetch_token(
        meta["token_endpoint"],
        code=code,
        code_verifier=code_verifier,
        **tls,
    )
    for key in ("access_token", "id_token"):
        if not token.get(key):
            raise FlowError(f"token response lacks {key}")
        secrets.append(token[key])
    secrets.append(token.get("refresh_token", ""))
    if str(token.get("token_type", "")).lower() != "bearer":
        raise FlowError(f"token_type is {token.get('token_type')!r}, not Bearer")

    resp = http.get(meta["jwks_uri"], **tls)
    if resp.status_code != 200:
        raise FlowError(f"JWKS {meta['jwks_uri']}: HTTP {resp.status_code}")
    keys = JsonWebKey.import_key_set(resp.json())
    if args.id_token_alg not in meta.get("id_token_signing_alg_values_supported", ["RS256"]):
        raise FlowError(f"discovery does not list {args.id_token_alg} for ID tokens")
    header = json.loads(base64.urlsafe_b64decode(token["id_token"].split(".")[0] + "=="))
    if header.get("alg") != args.id_token_alg:
        raise FlowError(f"the ID token is signed with {header.get('alg')!r}, not {args.id_token_alg}")
    claims = JsonWebToken([args.id_token_alg]).decode(
        token["id_token"],
        keys,
        claims_cls=CodeIDToken,
        claims_options={
            "iss": {"essential": True, "value": args.issuer},
            "aud": {"essential": True, "value": args.client_id},
        },
        claims_params={
            "nonce": nonce,
            "client_id": args.client_id,
            "access_token": token["access_token"],
        },
    )
    claims.validate()

    resp = client.get(meta["userinfo_endpoint"], **tls)
    if resp.status_code != 200:
        raise FlowError(f"userinfo: HTTP {resp.status_code}")
    info = resp.json()
    if info.get("sub") != claims["sub"]:
        raise FlowError("userinfo sub differs from the ID token's")

    return {
        "ok": True,
        "sub": claims["sub"],
        "preferred_username": info.get("preferred_username", claims.get("preferred_username")),
        "sid": claims.get("sid"),
        "alg": header["alg"],
    }


def self_test():
    """Offline checks of the parsing and redaction helpers."""
    redirect = "https://partner.localtest:8443/cb"
    issuer = "https://login.baa.localtest:9443"
    good = f"{redirect}?code=c0de%261&state=st4te&iss={issuer}"
    assert parse_redirect(good, redirect, "st4te", issuer) == "c0de&1"

    def fails(location, state="st4te", redirect_uri=redirect, needle=""):
        try:
            parse_redirect(location, redirect_uri, state, issuer)
        except FlowError as e:
            assert needle in str(e), (needle, str(e))
            return
        raise AssertionError(f"accepted: {location!r}")

    fails(good, state="other", needle="state")
    fails(good, redirect_uri="https://evil.localtest/cb", needle="redirect URI")
    fails(good.replace(issuer, "https://x"), needle="iss")
    fails(f"{redirect}?state=st4te", needle="no code")
    fails(f"{redirect}?error=login_required&state=st4te", needle="login_required")

    assert parse_resolve(["Login.baa.localtest=127.0.0.1"]) == {"login.baa.localtest": "127.0.0.1"}
    for bad in ("nohost", "=1.2.3.4", "host="):
        try:
            parse_resolve([bad])
        except FlowError:
            continue
        raise AssertionError(f"--resolve accepted {bad!r}")

    assert redact("code abc and abc", ["abc", ""]) == "code <redacted> and <redacted>"

    class Resp:
        headers = {"Location": "https://partner.localtest/cb?code=secret#frag"}

    assert redirect_location(Resp()) == "https://partner.localtest/cb"


class ArgParser(argparse.ArgumentParser):
    """Reports bad arguments as a FlowError (one JSON line) instead of exiting 2."""

    def error(self, message):
        raise FlowError(f"arguments: {message}")


def main(argv):
    if "--self-test" in argv:
        try:
            self_test()
        except AssertionError as e:
            print(json.dumps({"ok": False, "error": f"self-test: {e}"}))
            return 1
        print(json.dumps({"ok": True, "self_test": "passed"}))
        return 0

    p = ArgParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--issuer", required=True)
    p.add_argument("--discovery-base", required=True)
    p.add_argument("--client-id", required=True)
    p.add_argument("--client-secret", required=True)
    p.add_argument("--redirect-uri", required=True)
    p.add_argument("--sso-cookie", required=True, help="the agency cookies: NAME=VALUE; NAME=VALUE")
    p.add_argument("--ca-file", required=True)
    p.add_argument("--resolve", action="append", default=[], metavar="HOST=IP")
    p.add_argument("--id-token-alg", default="RS256", choices=["RS256", "ES256", "EdDSA"])
    secrets = []
    try:
        args = p.parse_args(argv)
        secrets += [args.client_secret]
        secrets += [c.partition("=")[2] for c in args.sso_cookie.split("; ")]
        result = run(args, secrets)
    except Exception as e:  # every failure becomes one JSON line
        msg = redact(f"{type(e).__name__}: {e}", secrets)
        print(json.dumps({"ok": False, "error": msg}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
