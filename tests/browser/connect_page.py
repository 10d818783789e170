"""How the tests read and drive the connect page, through its markup contract only (the
classes and data- attributes listed at the top of shared/src/http/connect/view/mod.rs:
`body[data-session]`, `section.definition[data-definition]`, `li.connection[data-status]`,
`.status`, `.error-message`, `details.logs`, `button[data-action]`, `form.values-form`,
`.field-error[data-field]`, `.banner`), and the provider's login and consent pages."""

import json

from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 20
INVALID_TITLE = "This connect link is no longer valid"
OAUTH_SUCCESS = "Authorization completed successfully"
FORM_SUCCESS = "Connected successfully"
BADGES = {
    "active": "Active",
    "configured": "Configured",
    "error": "Error",
    "pending": "Pending",
    "disconnected": "Disconnected",
}


def wait(driver, timeout=WAIT, ignore=()):
    ignored = (NoSuchElementException, StaleElementReferenceException, *ignore)
    return WebDriverWait(driver, timeout, ignored_exceptions=ignored)


def page_loaded(driver, old_body=None):
    """Waits until a page of the connect app is there (after `old_body`, if given, went stale)."""
    if old_body is not None:
        # While the document changes, chromedriver may answer about the old node with an error
        # of its own ("Node with given id does not belong to the document"): that is stale too.
        def gone(_):
            try:
                old_body.is_enabled()
                return False
            except (StaleElementReferenceException, WebDriverException):
                return True

        wait(driver).until(gone)
    wait(driver, ignore=(WebDriverException,)).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )
    return driver.find_element(By.TAG_NAME, "body")


def open_link(driver, link):
    """Opens a connect link; returns the session's page body (`body[data-session]`)."""
    driver.get(link)
    body = wait(driver).until(EC.presence_of_element_located((By.CSS_SELECTOR, "body[data-session], h1")))
    if body.tag_name != "body":
        raise AssertionError(f"{link} did not open the connect page: {driver.current_url}\n{text(driver)}")
    return body


def text(driver):
    return driver.find_element(By.TAG_NAME, "body").text


def heading(driver):
    return driver.find_element(By.TAG_NAME, "h1").text.strip()


def section(driver, key):
    return driver.find_element(By.CSS_SELECTOR, f'section.definition[data-definition="{key}"]')


def items(driver, key):
    """The connection rows of definition `key`: {connection id: its `li`}."""
    rows = section(driver, key).find_elements(By.CSS_SELECTOR, "li.connection")
    return {row.get_attribute("data-connection-id"): row for row in rows}


def item(driver, cid):
    return driver.find_element(By.CSS_SELECTOR, f'li.connection[data-connection-id="{cid}"]')


def status_of(driver, cid):
    """(data-status, the `.status` badge's text) of connection `cid` on the page."""
    row = item(driver, cid)
    return row.get_attribute("data-status"), row.find_element(By.CSS_SELECTOR, ".status").text.strip()


def banner(driver, kind):
    """The text of the `.banner.{kind}` (success / error) on the page, or None."""
    found = driver.find_elements(By.CSS_SELECTOR, f".banner.{kind}")
    return found[0].text.strip() if found else None


def new_connection_form(driver, key):
    """The values form of definition `key` that creates a connection (no data-connection-id)."""
    forms = section(driver, key).find_elements(By.CSS_SELECTOR, f'form.values-form[data-definition="{key}"]')
    fresh = [f for f in forms if not f.get_attribute("data-connection-id")]
    assert len(fresh) == 1, f"{len(fresh)} forms for a new {key} connection"
    return fresh[0]


def connection_form(driver, key, cid):
    """The values form that updates connection `cid`, opened first if it is folded in a
    `<details>` (as a customer would, by clicking its summary)."""
    form = section(driver, key).find_element(
        By.CSS_SELECTOR, f'form.values-form[data-definition="{key}"][data-connection-id="{cid}"]'
    )
    folded = driver.execute_script("const d = arguments[0].closest('details'); return d && !d.open ? d : null", form)
    if folded is not None:
        folded.find_element(By.TAG_NAME, "summary").click()
        wait(driver).until(lambda d: form.is_displayed())
    return form


def field(form, name):
    return form.find_element(By.CSS_SELECTOR, f'[name="value.{name}"]')


def fill(form, values):
    for name, value in values.items():
        element = field(form, name)
        element.clear()
        element.send_keys(value)


def field_error(form, name):
    found = form.find_elements(By.CSS_SELECTOR, f'.field-error[data-field="{name}"]')
    return found[0].text.strip() if found else None


def submit_and_wait(driver, button):
    """Clicks `button` (a form's submit) and waits for the next page (accepting a confirm
    dialog the page may ask first)."""
    body = driver.find_element(By.TAG_NAME, "body")
    button.click()
    try:
        driver.switch_to.alert.accept()
    except NoAlertPresentException:
        pass
    return page_loaded(driver, body)


def save(driver, form):
    return submit_and_wait(driver, form.find_element(By.CSS_SELECTOR, 'button[data-action="save"]'))


def new_connect_button(driver, key):
    """The section's Connect button for a new OAuth connection (not one of a connection row)."""
    buttons = section(driver, key).find_elements(
        By.XPATH, ".//button[@data-action='connect'][not(ancestor::li[contains(concat(' ', @class, ' '), ' connection ')])]"
    )
    assert len(buttons) == 1, f"{len(buttons)} Connect buttons for a new {key} connection"
    return buttons[0]


def provider_login(driver, issuer):
    """On the provider's login page: any name, any password, Sign-in."""
    wait(driver).until(lambda d: d.current_url.startswith(issuer + "/") and d.find_elements(By.NAME, "login"))
    driver.find_element(By.NAME, "login").send_keys("customer@example.com")
    driver.find_element(By.NAME, "password").send_keys("any-password")
    submit_and_wait(driver, driver.find_element(By.CSS_SELECTOR, "form button[type=submit]"))


def provider_consent(driver, issuer):
    """On the provider's consent page: Continue; returns the page after it (the app's)."""
    wait(driver).until(
        lambda d: d.current_url.startswith(issuer + "/") and d.find_elements(By.CSS_SELECTOR, 'input[name="prompt"][value="consent"]')
    )
    return submit_and_wait(driver, driver.find_element(By.CSS_SELECTOR, "form button[type=submit]"))


def requested_urls(driver):
    """Every URL the browser requested since the last call (chromium's network log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls

