"""The hosted connect page in a real browser (Debian's headless chromium, driven by Selenium):
the customer's flows end to end against `latchkey serve`, with oidc-provider as the OAuth
provider. The page is read through the design's markup contract only (see connect_page.py).
Each test saves screenshots of the screens it passes through to target/screenshots/<test>/."""

import colorsys
import json
import re
from urllib.parse import parse_qs, quote, urlparse

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from conftest import Org
from connect_page import (
    BADGES,
    FORM_SUCCESS,
    INVALID_TITLE,
    OAUTH_SUCCESS,
    banner,
    connection_form,
    field,
    field_error,
    fill,
    heading,
    item,
    items,
    new_connect_button,
    new_connection_form,
    open_link,
    page_loaded,
    provider_consent,
    provider_login,
    requested_urls,
    save,
    section,
    status_of,
    submit_and_wait,
    text,
    wait,
)

# Planted values: none of them may ever be in a page's HTML.
API_KEY = "sk_live_planted_4f1c9e"
NEW_API_KEY = "sk_live_replaced_77ad02"
TYPED_KEY = "sk_live_typed_then_refused_0b5e"
ORG_ONLY_VALUE = "org-only-plan-d41d8c"
EMBEDDED_VALUE = "embedded-workspace-8e2f11"
SECRET_DEFAULT = "password-default-c0ffee42"
ACCESS_TOKEN = "at-planted-5a7b3c9d"
REFRESH_TOKEN = "rt-planted-9e8d7c6b"

ACME = {
    "label": "Acme API",
    "description": "The API key of your Acme workspace (Settings, then API keys).",
    "auth": "api_key",
    "inputs": {
        "apiKey": {"label": "API key", "type": "password", "required": True},
        "endpoint": {
            "label": "Endpoint",
            "type": "url",
            "default": "https://api.acme.example",
            "description": "Only for Acme's EU cloud.",
        },
        "plan": {"label": "Billing plan", "type": "string", "visibility": "organization", "default": ORG_ONLY_VALUE},
    },
}


def session_path(driver):
    """The page's own path, `/connect/{session id}` (never the link's secret)."""
    session = driver.find_element(By.TAG_NAME, "body").get_attribute("data-session")
    assert session, "body has no data-session"
    return f"/connect/{session}"


def connected_id(driver):
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-connected")


def reload(driver):
    driver.refresh()
    return page_loaded(driver)


def test_api_key_connect_shows_a_field_error_then_connects(org, browsers, shot):
    org.define("acme-api", ACME)
    link = org.connect_link("c-1", definitions=["acme-api"])
    driver = browsers()
    open_link(driver, link)

    # The link's secret is traded for a cookie and leaves the address bar.
    url = urlparse(driver.current_url)
    assert url.path == session_path(driver) and "session" not in parse_qs(url.query), driver.current_url
    acme = section(driver, "acme-api")
    assert acme.find_element(By.TAG_NAME, "h2").text.strip() == "Acme API"
    assert ACME["description"] in acme.text
    assert items(driver, "acme-api") == {}

    form = new_connection_form(driver, "acme-api")
    for name, label in (("apiKey", "API key"), ("endpoint", "Endpoint")):
        element = field(form, name)
        labels = driver.find_elements(By.CSS_SELECTOR, f'label[for="{element.get_attribute("id")}"]')
        assert len(labels) == 1 and label in labels[0].text, f"the label of {name}: {[x.text for x in labels]}"
    assert field(form, "apiKey").get_attribute("type") == "password"
    assert field(form, "apiKey").get_attribute("required") is not None or field(form, "apiKey").get_attribute(
        "aria-required"
    ) == "true", "apiKey is required and not marked so"
    assert field(form, "endpoint").get_attribute("value") == "https://api.acme.example"
    assert not form.find_elements(By.CSS_SELECTOR, '[name="value.plan"]'), "an organization-only input is shown"
    shot(driver, "form")

    # A URL the browser accepts but Latchkey does not (not http/https): the server's error is
    # shown next to the field, nothing is created, the typed key is not sent back.
    fill(form, {"apiKey": TYPED_KEY, "endpoint": "ftp://files.acme.example"})
    save(driver, form)
    form = new_connection_form(driver, "acme-api")
    error = field_error(form, "endpoint")
    assert error, f"no field error for endpoint:\n{text(driver)}"
    assert field_error(form, "apiKey") is None
    endpoint = field(form, "endpoint")
    error_element = form.find_element(By.CSS_SELECTOR, '.field-error[data-field="endpoint"]')
    assert driver.execute_script(
        "return arguments[0].parentElement.contains(arguments[1])", error_element, endpoint
    ), "the endpoint error is not next to its field"
    assert field(form, "apiKey").get_attribute("value") == ""
    assert TYPED_KEY not in driver.page_source
    assert org.connections("c-1") == []
    shot(driver, "validation-error", focus=error_element)

    # Corrected, and sent from the keyboard (Enter in the key field).
    fill(form, {"apiKey": API_KEY, "endpoint": "https://eu.acme.example"})
    body = driver.find_element(By.TAG_NAME, "body")
    field(form, "apiKey").send_keys(Keys.ENTER)
    page_loaded(driver, body)
    assert banner(driver, "success") == FORM_SUCCESS
    cid = connected_id(driver)
    assert cid and status_of(driver, cid) == ("configured", "Configured")
    assert API_KEY not in driver.page_source
    shot(driver, "connected")

    created = org.connection(cid)
    assert (created["customer"], created["definition"], created["status"]) == ("c-1", "acme-api", "configured")
    assert created["values"]["endpoint"] == "https://eu.acme.example"
    found = org.lookup(cid)
    assert found.status_code == 200, found.text
    assert found.json()["fields"]["apiKey"] == API_KEY
    reload(driver)
    assert status_of(driver, cid) == ("active", "Active")
    shot(driver, "active")


def test_oauth_connect_consents_at_the_provider_and_turns_active_after_a_lookup(org, oidc, browsers, shot):
    org.define("idp", oidc.definition(description="Sign in with your Strict IdP account."))
    link = org.connect_link("c-1", definitions=["idp"])
    driver = browsers()
    open_link(driver, link)
    page = session_path(driver)
    idp = section(driver, "idp")
    assert idp.find_element(By.TAG_NAME, "h2").text.strip() == "Strict IdP"
    assert not idp.find_elements(By.CSS_SELECTOR, "form.values-form"), "an OAuth definition gets a form"
    shot(driver, "list")

    exchanges = oidc.code_exchanges()
    submit_and_wait(driver, new_connect_button(driver, "idp"))
    provider_login(driver, oidc.issuer)
    provider_consent(driver, oidc.issuer)
    wait(driver).until(lambda d: banner(d, "success") is not None)
    assert banner(driver, "success") == OAUTH_SUCCESS
    assert urlparse(driver.current_url).path == page
    cid = connected_id(driver)
    assert cid and status_of(driver, cid) == ("configured", "Configured")
    assert oidc.code_exchanges() == exchanges + 1
    shot(driver, "oauth-success", focus=True)

    found = org.lookup(cid, {"min_valid_seconds": 60})
    assert found.status_code == 200, found.text
    access_token = found.json()["token"]["access_token"]
    reload(driver)
    assert status_of(driver, cid) == ("active", "Active")
    assert access_token not in driver.page_source
    connection = org.connection(cid)
    assert (connection["customer"], connection["status"]) == ("c-1", "active")
    shot(driver, "active")


def test_authorize_step_replayed_from_another_browser_is_refused(org, oidc, browsers, shot):
    org.define("idp", oidc.definition())
    link = org.connect_link("c-1", definitions=["idp"])
    first = browsers()
    open_link(first, link)
    requested_urls(first)  # drop what came before the Connect button
    submit_and_wait(first, new_connect_button(first, "idp"))
    wait(first).until(lambda d: d.find_elements(By.NAME, "login"))
    authorize = [u for u in requested_urls(first) if u.startswith(oidc.authorize_url + "?")]
    assert len(authorize) == 1, f"the provider's authorize request: {authorize}"
    [pending] = org.connections("c-1")
    assert pending["status"] == "pending"

    # The same authorize URL, forwarded to another browser (no connect cookie there): the
    # provider lets that user consent, and Latchkey's callback refuses it.
    exchanges = oidc.code_exchanges()
    second = browsers()
    second.get(authorize[0])
    provider_login(second, oidc.issuer)
    provider_consent(second, oidc.issuer)
    assert urlparse(second.current_url).path == "/v1/oauth/callback", second.current_url
    assert "Authorization refused" in text(second)
    assert OAUTH_SUCCESS not in text(second)
    shot(second, "refused")

    assert oidc.code_exchanges() == exchanges, "the refused callback exchanged the code"
    [after] = org.connections("c-1")
    assert (after["id"], after["status"], after["version"]) == (pending["id"], "pending", pending["version"])


def test_disconnect_turns_the_connection_grey(org, browsers, shot):
    org.define("acme-api", ACME)
    cid = org.create({"definition": "acme-api", "customer": "c-1", "label": "Acme prod", "values": {"apiKey": API_KEY}})["id"]
    assert org.lookup(cid).status_code == 200
    driver = browsers()
    open_link(driver, org.connect_link("c-1", definitions=["acme-api"]))
    assert status_of(driver, cid) == ("active", "Active")
    assert "Acme prod" in item(driver, cid).text

    submit_and_wait(driver, item(driver, cid).find_element(By.CSS_SELECTOR, 'button[data-action="disconnect"]'))
    assert status_of(driver, cid) == ("disconnected", "Disconnected")
    assert not item(driver, cid).find_elements(By.CSS_SELECTOR, 'button[data-action="disconnect"]')
    shot(driver, "disconnected")
    assert org.connection(cid)["status"] == "disconnected"
    refused = org.lookup(cid)
    assert refused.status_code == 409 and "disconnected" in refused.json()["type"], refused.text


def test_reconnect_of_a_red_connection_keeps_its_id(org, browsers, shot):
    org.define("acme-api", ACME)
    cid = org.create({"definition": "acme-api", "customer": "c-1", "values": {"apiKey": API_KEY}})["id"]
    assert org.lookup(cid).status_code == 200
    org.report_error(cid, "Acme answered 401: the key was revoked")
    assert org.connection(cid)["status"] == "error"

    driver = browsers()
    open_link(driver, org.connect_link("c-1", definitions=["acme-api"], connection_id=cid))
    assert status_of(driver, cid) == ("error", "Error")
    message = item(driver, cid).find_element(By.CSS_SELECTOR, ".error-message").text
    assert "Acme answered 401" in message, message
    shot(driver, "red")

    form = connection_form(driver, "acme-api", cid)
    fill(form, {"apiKey": NEW_API_KEY})
    save(driver, form)
    assert banner(driver, "success") == FORM_SUCCESS
    assert connected_id(driver) == cid
    assert list(items(driver, "acme-api")) == [cid]
    assert status_of(driver, cid) == ("configured", "Configured")
    shot(driver, "reconnected")

    assert [c["id"] for c in org.connections("c-1")] == [cid]
    found = org.lookup(cid)
    assert found.status_code == 200, found.text
    assert found.json()["fields"]["apiKey"] == NEW_API_KEY


def rgba(css_colour):
    """(r, g, b, alpha) of a computed `rgb(...)`/`rgba(...)` colour, r/g/b in 0..255."""
    parts = [float(x) for x in re.findall(r"[\d.]+", css_colour)]
    return (*parts[:3], parts[3] if len(parts) > 3 else 1.0)


def hue_and_spread(colour):
    """The hue (degrees) of an (r, g, b, a) colour and its chroma (max - min channel, 0..255):
    under about 40 it reads as grey whatever the hue."""
    r, g, b, _ = colour
    return colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)[0] * 360, max(r, g, b) - min(r, g, b)


HUES = {"green": (80, 170), "yellow": (30, 65), "red": (-20, 20)}


def reads_as(colour, name):
    """Whether `colour` reads as `name`: one of HUES with some chroma, or "grey"."""
    hue, spread = hue_and_spread(colour)
    if name == "grey":
        return spread < 40
    low, high = HUES[name]
    hue = hue - 360 if hue > 180 and low < 0 else hue
    return spread >= 8 and low <= hue <= high


def badge_colours(driver, cid):
    """(text colour, background colour) of a connection's status badge."""
    badge = item(driver, cid).find_element(By.CSS_SELECTOR, ".status")
    return rgba(badge.value_of_css_property("color")), rgba(badge.value_of_css_property("background-color"))


def test_list_shows_every_status_with_its_colour_logs_and_labels(org, oidc, browsers, shot):
    org.define("acme-api", ACME)
    org.define("idp", oidc.definition())
    new = {"definition": "acme-api", "customer": "c-1", "values": {"apiKey": API_KEY}}
    # Created oldest first: the page lists the newest first.
    grey = org.create({**new, "label": "Old workspace"})["id"]
    org.server.api(org.token, "POST", f"/v1/connections/{grey}/disconnect")
    red = org.create({**new, "label": "Reporting"})["id"]
    assert org.lookup(red).status_code == 200
    org.report_error(red, "Acme answered 401: invalid API key")
    configured = org.create({**new, "label": "Staging"})["id"]
    active = org.create({**new, "label": "Production"})["id"]
    assert org.lookup(active).status_code == 200
    pending = org.create({"definition": "idp", "customer": "c-1"})["id"]
    elsewhere = org.create({**new, "customer": "c-2"})["id"]

    driver = browsers()
    open_link(driver, org.connect_link("c-1"))
    expected = {configured: "configured", active: "active", red: "error", grey: "disconnected", pending: "pending"}
    for cid, status in expected.items():
        assert status_of(driver, cid) == (status, BADGES[status])
    assert set(items(driver, "acme-api")) == {configured, active, red, grey}
    assert set(items(driver, "idp")) == {pending}
    assert elsewhere not in driver.page_source, "another customer's connection is shown"
    assert "invalid API key" in item(driver, red).find_element(By.CSS_SELECTOR, ".error-message").text

    # Colours: green, yellow, red, and grey for both pending and disconnected; the badge's text
    # says it, and its background (unless transparent) is a shade of the same.
    named = {"active": "green", "configured": "yellow", "error": "red", "pending": "grey", "disconnected": "grey"}
    for cid, status in expected.items():
        colour, background = badge_colours(driver, cid)
        assert reads_as(colour, named[status]) and hue_and_spread(colour)[1] >= (0 if named[status] == "grey" else 60), (
            f"the {status} badge's text is {colour}, not {named[status]}"
        )
        assert background[3] == 0 or reads_as(background, named[status]), (
            f"the {status} badge's background is {background}, not {named[status]}"
        )

    # The red connection's log, newest lines first, behind a disclosure.
    logs = item(driver, red).find_element(By.CSS_SELECTOR, "details.logs")
    logs.find_element(By.TAG_NAME, "summary").click()
    assert logs.get_attribute("open") is not None
    assert logs.text.strip(), "the log is empty"

    # Every form control has a label; Connect for OAuth rows, Disconnect for live ones.
    for control in driver.find_elements(By.CSS_SELECTOR, "form.values-form input:not([type=hidden]), form.values-form textarea, form.values-form select"):
        control_id = control.get_attribute("id")
        assert control_id and driver.find_elements(By.CSS_SELECTOR, f'label[for="{control_id}"]'), (
            f"{control.get_attribute('name')} has no label"
        )
    assert item(driver, pending).find_elements(By.CSS_SELECTOR, 'button[data-action="connect"]')
    for cid in (configured, active, red):
        assert item(driver, cid).find_elements(By.CSS_SELECTOR, 'button[data-action="disconnect"]'), cid
    shot(driver, "list", focus=True)


def test_page_never_shows_secrets_tokens_or_organization_inputs(org, oidc, browsers):
    definition = json.loads(json.dumps(ACME))
    definition["inputs"]["workspace"] = {"label": "Workspace id", "type": "string", "visibility": "embedded", "default": EMBEDDED_VALUE}
    definition["inputs"]["signingSecret"] = {"label": "Signing secret", "type": "password", "default": SECRET_DEFAULT}
    org.define("acme-api", definition)
    org.define("idp", oidc.definition())
    cid = org.create({"definition": "acme-api", "customer": "c-1", "values": {"apiKey": API_KEY}})["id"]
    imported = org.create(
        {"definition": "idp", "customer": "c-1", "tokens": {"access_token": ACCESS_TOKEN, "refresh_token": REFRESH_TOKEN, "expires_in": 3600}}
    )["id"]
    # They are really there: the runtime gets every one of them.
    fields = org.lookup(cid).json()["fields"]
    assert (fields["apiKey"], fields["plan"], fields["workspace"], fields["signingSecret"]) == (
        API_KEY, ORG_ONLY_VALUE, EMBEDDED_VALUE, SECRET_DEFAULT)
    assert org.lookup(imported).json()["token"]["access_token"] == ACCESS_TOKEN

    driver = browsers()
    open_link(driver, org.connect_link("c-1"))
    assert status_of(driver, cid)[0] == "active" and status_of(driver, imported)[0] == "active"
    planted = (API_KEY, ORG_ONLY_VALUE, EMBEDDED_VALUE, SECRET_DEFAULT, ACCESS_TOKEN, REFRESH_TOKEN, oidc.client_secret)

    def check(where):
        html = driver.page_source
        for value in planted:
            assert value not in html, f"{where}: the page holds {value}"
        for hidden in ("value.plan", "value.workspace", "Billing plan", "Workspace id", "clientSecret", "value.clientId"):
            assert hidden not in html, f"{where}: the page shows {hidden}"
        for password in driver.find_elements(By.CSS_SELECTOR, "input[type=password]"):
            assert password.get_attribute("value") == "", f"{where}: a password input has a value"

    check("the list")
    # The form is there with its password input, without the default's value.
    form = new_connection_form(driver, "acme-api")
    assert field(form, "signingSecret").get_attribute("type") == "password"
    # A refused submit re-renders the form: still nothing typed or stored comes back.
    fill(form, {"apiKey": TYPED_KEY, "signingSecret": TYPED_KEY, "endpoint": "ftp://files.acme.example"})
    save(driver, form)
    assert field_error(new_connection_form(driver, "acme-api"), "endpoint")
    check("the refused form")
    assert TYPED_KEY not in driver.page_source
    form = connection_form(driver, "acme-api", cid)
    fill(form, {"apiKey": NEW_API_KEY})
    save(driver, form)
    assert banner(driver, "success") == FORM_SUCCESS
    check("the success page")
    assert NEW_API_KEY not in driver.page_source


def test_reused_link_is_refused(org, browsers, shot):
    org.define("acme-api", ACME)
    link = org.connect_link("c-1")
    first = browsers()
    open_link(first, link)
    page = first.current_url

    second = browsers()
    second.get(link)
    assert heading(second) == INVALID_TITLE
    shot(second, "reused")
    # Nor does the page's own URL open without the first browser's cookie.
    second.get(page)
    assert heading(second) == INVALID_TITLE
    # The first browser keeps its page.
    reload(first)
    assert first.find_element(By.TAG_NAME, "body").get_attribute("data-session")
    assert section(first, "acme-api")


def test_expired_links_are_refused(shifted_latchkey, browsers, shot):
    org = Org(shifted_latchkey)
    org.define("acme-api", ACME)
    unopened = org.connect_link("c-1")
    opened = org.connect_link("c-1")
    driver = browsers()
    open_link(driver, opened)
    page = driver.current_url

    # 29 minutes on, the session is still good...
    shifted_latchkey.shift(29 * 60)
    reload(driver)
    assert section(driver, "acme-api")
    # ...31 minutes on, neither the page nor a link never opened is.
    shifted_latchkey.shift(31 * 60)
    driver.get(page)
    assert heading(driver) == INVALID_TITLE
    driver.get(unopened)
    assert heading(driver) == INVALID_TITLE
    shot(driver, "expired", focus=True)


def test_popup_posts_the_connection_id_to_its_opener(org, latchkey, host, browsers, shot):
    org.define("acme-api", ACME)
    link = org.connect_link("c-1", definitions=["acme-api"], parent_origin=host)
    driver = browsers()
    driver.get(f"{host}/host.html#mode=popup&link={quote(link, safe='')}")
    opener = driver.current_window_handle
    driver.find_element(By.ID, "open").click()
    wait(driver).until(lambda d: len(d.window_handles) == 2)
    [popup] = [h for h in driver.window_handles if h != opener]
    driver.switch_to.window(popup)
    wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "body[data-session]"))
    assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-parent-origin") == host

    form = new_connection_form(driver, "acme-api")
    fill(form, {"apiKey": API_KEY})
    save(driver, form)
    assert banner(driver, "success") == FORM_SUCCESS
    cid = connected_id(driver)
    assert cid
    shot(driver, "popup-connected")

    driver.switch_to.window(opener)
    received = wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#received li.message"))
    assert len(received) == 1
    assert received[0].get_attribute("data-origin") == latchkey.url
    assert json.loads(received[0].text) == {"type": "latchkey:connected", "connection_id": cid}
    assert org.connection(cid)["customer"] == "c-1"


def test_iframe_on_an_allowed_origin_connects_and_tells_its_parent(org, latchkey, host, browsers, shot):
    org.define("acme-api", ACME)
    link = org.connect_link("c-1", definitions=["acme-api"], parent_origin=host)
    driver = browsers()
    driver.get(f"{host}/host.html#mode=frame&link={quote(link, safe='')}")
    frame = wait(driver).until(lambda d: d.find_element(By.ID, "connect-frame"))
    driver.switch_to.frame(frame)
    # A page the frame-ancestors of LATCHKEY_CONNECT_FRAME_ANCESTORS lets in; its cookie is
    # same-site (both on 127.0.0.1), so SameSite=Lax sends it.
    wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "body[data-session]"))
    form = new_connection_form(driver, "acme-api")
    fill(form, {"apiKey": API_KEY})
    save(driver, form)
    assert banner(driver, "success") == FORM_SUCCESS
    cid = connected_id(driver)
    driver.switch_to.default_content()
    received = wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#received li.message"))
    assert received[0].get_attribute("data-origin") == latchkey.url
    assert json.loads(received[0].text) == {"type": "latchkey:connected", "connection_id": cid}
    shot(driver, "iframe")


def test_oauth_from_an_iframe_opens_the_provider_in_a_window_and_tells_the_frame_and_its_parent(
    org, latchkey, oidc, host, browsers, shot
):
    org.define("idp", oidc.definition())
    link = org.connect_link("c-1", definitions=["idp"], parent_origin=host)
    driver = browsers()
    driver.get(f"{host}/host.html#mode=frame&link={quote(link, safe='')}")
    app = driver.current_window_handle
    driver.switch_to.frame(wait(driver).until(lambda d: d.find_element(By.ID, "connect-frame")))
    wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "body[data-session]"))
    # Providers refuse to be framed: Connect opens a window of its own.
    new_connect_button(driver, "idp").click()
    wait(driver).until(lambda d: len(d.window_handles) == 2)
    [window] = [h for h in driver.window_handles if h != app]
    driver.switch_to.window(window)
    provider_login(driver, oidc.issuer)
    provider_consent(driver, oidc.issuer)
    wait(driver).until(lambda d: banner(d, "success") is not None)
    assert banner(driver, "success") == OAUTH_SUCCESS
    cid = connected_id(driver)
    assert cid

    # That window told the framed page, which shows the success too and tells the app.
    driver.switch_to.window(app)
    received = wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#received li.message"))
    assert received[0].get_attribute("data-origin") == latchkey.url
    assert json.loads(received[0].text) == {"type": "latchkey:connected", "connection_id": cid}
    driver.switch_to.frame(driver.find_element(By.ID, "connect-frame"))
    wait(driver).until(lambda d: banner(d, "success") is not None)
    assert banner(driver, "success") == OAUTH_SUCCESS
    assert connected_id(driver) == cid
    assert status_of(driver, cid) == ("configured", "Configured")
    driver.switch_to.default_content()
    shot(driver, "iframe-oauth")
    assert org.connection(cid)["status"] == "configured"
