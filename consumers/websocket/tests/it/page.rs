//! The live task page in a real browser (Debian's headless Chromium, driven
//! by chromedriver): two tabs of one user; what one does, the other shows.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`.ci/run`
//! installs them); `CHROMEDRIVER` and `CHROMIUM` override their paths.

use crate::common;

use common::{eventually, Realtime};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use todo_api::testing::Stack;

const WAIT: Duration = Duration::from_secs(20);

struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    async fn start() -> Driver {
        let binary =
            std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {binary} ({e}): install the Debian packages chromium and chromium-driver")
            });
        // Dropping the driver (also on a panic below) stops chromedriver.
        let driver = Driver { child, port };
        let status = format!("http://127.0.0.1:{port}/status");
        for _ in 0..100 {
            if reqwest::get(&status).await.is_ok() {
                return driver;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not answer on port {port}");
    }

    async fn session(&self, profile: &std::path::Path) -> Client {
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Chromium session with a profile of its own, under a chromedriver of
/// its own.
struct Browser {
    client: Client,
    driver: Driver,
    profile: PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        let driver = Driver::start().await;
        let profile = std::env::temp_dir().join(format!("todo-chromium-{}", uuid::Uuid::new_v4()));
        let client = driver.session(&profile).await;
        Browser {
            client,
            driver,
            profile,
        }
    }

    /// The element at `locator`, once the page shows it.
    async fn shown(&self, locator: Locator<'_>, what: &str) -> Element {
        self.wait()
            .at_most(WAIT)
            .for_element(locator)
            .await
            .expect(what)
    }

    /// The row of the task titled `title`, once it shows (done or not).
    async fn task(&self, title: &str, done: bool, what: &str) -> Element {
        self.shown(Locator::XPath(&task_titled(title, done)), what)
            .await
    }

    async fn click(&self, locator: Locator<'_>, what: &str) {
        self.find(locator)
            .await
            .expect(what)
            .click()
            .await
            .expect(what);
    }

    /// Opens the page in the current tab and connects with `token`.
    async fn open(&self, url: &str, token: &str) {
        self.goto(url).await.expect("page loads");
        let field = self.shown(Locator::Id("token"), "token field").await;
        field.send_keys(token).await.expect("type the token");
        self.click(Locator::Id("connect"), "click connect").await;
        self.shown(Locator::Css("#status.live"), "the page goes live")
            .await;
    }

    async fn close(self) {
        let Browser {
            client,
            driver,
            profile,
        } = self;
        client.close().await.expect("browser closes");
        drop(driver);
        let _ = std::fs::remove_dir_all(&profile);
    }
}

/// The session's own commands (`goto`, `find`, ...) on the browser itself.
impl std::ops::Deref for Browser {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

fn task_titled(title: &str, done: bool) -> String {
    let is_done = "contains(concat(' ', @class, ' '), ' done ')";
    let state = if done {
        is_done.to_owned()
    } else {
        format!("not({is_done})")
    };
    format!("//ul[@id='tasks']/li[{state}][span[@class='title' and text()='{title}']]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_added_in_one_tab_appears_in_the_other() {
    let (stack, api, rt) = common::start(&[]).await;
    let ann = stack.token("ann");
    // A task from before the page opens is loaded over REST.
    stack
        .create(&api, &ann, json!({"title": "already there"}))
        .await;

    let browser = Browser::start().await;
    let page = format!("http://{}/", rt.base);
    browser.open(&page, &ann).await;
    let first = browser.window().await.expect("first tab");
    let second = browser.new_window(true).await.expect("second tab").handle;
    browser
        .switch_to_window(second.clone())
        .await
        .expect("switch");
    browser.open(&page, &ann).await;
    browser
        .task("already there", false, "the existing task is listed")
        .await;

    // Add in the second tab...
    browser
        .find(Locator::Id("new-title"))
        .await
        .expect("title field")
        .send_keys("buy oat milk")
        .await
        .expect("type");
    browser.click(Locator::Id("add"), "click add").await;
    // ...it shows in the first, pushed over its socket.
    browser.switch_to_window(first).await.expect("switch back");
    let added = browser
        .task(
            "buy oat milk",
            false,
            "the task added in the other tab appears",
        )
        .await;

    // Complete it here; the second tab shows it done.
    added
        .find(Locator::Css("input.toggle"))
        .await
        .expect("checkbox")
        .click()
        .await
        .expect("complete");
    browser.switch_to_window(second).await.expect("switch");
    browser
        .task(
            "buy oat milk",
            true,
            "the completion shows in the other tab",
        )
        .await;

    let (status, tasks) = stack
        .call(&api, reqwest::Method::GET, "/tasks", &ann, None)
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let titles: Vec<&str> = tasks["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|t| t["title"].as_str())
        .collect();
    assert!(titles.contains(&"buy oat milk"), "{titles:?}");

    // For a look at the page: PAGE_SCREENSHOT=/tmp/page.png cargo test ...
    if let Ok(path) = std::env::var("PAGE_SCREENSHOT") {
        let png = browser.screenshot().await.expect("screenshot");
        std::fs::write(&path, png).expect("write the screenshot");
    }
    browser.close().await;
    rt.stop().await;
    api.stop().await;
}

/// todo-api's documentation page (Redoc, its script compiled into the
/// binary) renders the document in Chromium with no network: the
/// operations list shows every route's summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_documentation_page_lists_the_operations() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let browser = Browser::start().await;
    // Wide enough for Redoc's side menu (narrower, it folds it away).
    browser
        .set_window_size(1400, 1000)
        .await
        .expect("window size");
    browser
        .goto(&format!("{}/docs", api.base))
        .await
        .expect("the docs page loads");
    // The side menu lists the tags; a click opens one's operations (and
    // closes the others).
    let mut first_screenshot = None;
    for (tag, summaries) in [
        (
            "tasks",
            &[
                "Create a task",
                "List tasks",
                "Change some of a task's fields",
                "Complete a task",
            ][..],
        ),
        ("notifications", &["Set the caller's reminder channels"][..]),
    ] {
        let menu_item = format!("//*[@role='menuitem'][.//*[text()='{tag}']]");
        browser
            .shown(
                Locator::XPath(&menu_item),
                &format!("the tag {tag} is in the side menu"),
            )
            .await
            .click()
            .await
            .expect("open the tag");
        for summary in summaries {
            let item = Locator::XPath(&format!("//*[@role='menuitem']//*[text()=\"{summary}\"]"));
            eventually(WAIT, Duration::from_millis(100), async || {
                let shown = match browser.find(item).await {
                    Ok(e) => e.is_displayed().await.unwrap_or(false),
                    Err(_) => false,
                };
                if shown {
                    Ok(())
                } else {
                    Err(format!(
                        "{summary:?} is not shown under {tag} after {WAIT:?}"
                    ))
                }
            })
            .await;
        }
        if first_screenshot.is_none() {
            first_screenshot = Some(browser.screenshot().await.expect("a screenshot"));
        }
    }
    // The page with the tasks' operations listed, for a look.
    let png = first_screenshot.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = std::env::var("DOCS_SCREENSHOT")
        .unwrap_or_else(|_| concat!(env!("CARGO_TARGET_TMPDIR"), "/docs-page.png").to_owned());
    std::fs::write(&path, &png).expect("screenshot written");
    browser.close().await;
    api.stop().await;
}

/// The socket goes away (todo-realtime stops): the page says so, keeps the
/// list fresh by polling todo-api, and, once todo-realtime is back on its
/// port, is live again within the 5 s the specs allow, with nothing missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_socket_the_page_polls_and_then_goes_live_again() {
    let vars = [("REALTIME_PAGE_POLL_SECS", "1")];
    let (stack, api, rt) = common::start(&vars).await;
    let ann = stack.token("ann");
    let browser = Browser::start().await;
    browser.open(&format!("http://{}/", rt.base), &ann).await;

    // What a task shows besides its title.
    stack
        .create(
            &api,
            &ann,
            json!({"title": "file taxes", "priority": "high", "tags": ["home", "money"],
                   "due_at": "2030-04-15T09:00:00Z"}),
        )
        .await;
    let row = browser
        .task("file taxes", false, "the task arrives over the socket")
        .await;
    let meta = row
        .find(Locator::Css(".meta"))
        .await
        .expect("its details")
        .text()
        .await
        .expect("text");
    for shown in ["high", "#home", "#money", "2030"] {
        assert!(meta.contains(shown), "{shown:?} not in {meta:?}");
    }

    let port = rt.port();
    rt.stop().await;
    browser
        .shown(
            Locator::Css("#status.polling"),
            "the page falls back to polling",
        )
        .await;
    stack
        .create(
            &api,
            &ann,
            json!({"title": "made while the socket was down"}),
        )
        .await;
    browser
        .task(
            "made while the socket was down",
            false,
            "a change made over REST appears by polling",
        )
        .await;

    // Back on the same port (the page's origin).
    let mut settings = stack.settings();
    settings.port = port;
    let rt = Realtime::spawn_with(&stack, &api, &vars, settings).await;
    let back = std::time::Instant::now();
    browser
        .wait()
        .at_most(Duration::from_secs(5))
        .for_element(Locator::Css("#status.live"))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "not live again {:?} after todo-realtime returned: {e}",
                back.elapsed()
            )
        });
    // Live means pushed, not polled: the page logs each event its socket
    // delivers, and polling no longer runs.
    stack
        .create(&api, &ann, json!({"title": "after the return"}))
        .await;
    browser
        .shown(
            Locator::XPath(
                "//div[@id='log']/div[contains(text(), 'task.created') and contains(text(), 'after the return')]",
            ),
            "the next change arrives over the socket",
        )
        .await;
    let titles: Vec<String> = {
        let mut out = Vec::new();
        for e in browser
            .find_all(Locator::Css("#tasks li .title"))
            .await
            .expect("rows")
        {
            out.push(e.text().await.expect("title"));
        }
        out
    };
    for title in [
        "file taxes",
        "made while the socket was down",
        "after the return",
    ] {
        assert!(
            titles.iter().any(|t| t == title),
            "{title:?} missing: {titles:?}"
        );
    }
    browser.close().await;
    rt.stop().await;
    api.stop().await;
}

/// A reminder fired by a real todo-notifier shows at the top of the page as
/// it fires, and a recurring task shows what comes next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_shows_as_it_fires_and_a_recurring_task_its_next_occurrence() {
    use todo_consumer::ConsumerConfig;
    use todo_contract::envelope::Topic;
    use todo_notifier::app::{App, ChannelOptions, Options};
    use todo_platform::config::Env;

    let (stack, api, rt) = common::start(&[]).await;
    let mut consumer = ConsumerConfig::new(todo_notifier::NAME, &[Topic::TaskEvents]);
    consumer.session_timeout = Duration::from_secs(6);
    let notifier = App::with_log_delivery(
        &stack.settings(),
        Options {
            consumer,
            max_attempts: 3,
            delivery_lease: Duration::from_secs(5),
            retention: Default::default(),
            channels: ChannelOptions::from_lookup(&Env::new(|_: &str| None), 3)
                .expect("no channels"),
        },
    )
    .await
    .expect("todo-notifier starts");
    let (stop_notifier, shutdown) = todo_platform::shutdown::channel();
    let notifier = tokio::spawn(notifier.run(shutdown));
    let ann = stack.token("ann");
    let browser = Browser::start().await;
    browser.open(&format!("http://{}/", rt.base), &ann).await;

    let fires = chrono::Utc::now() + chrono::TimeDelta::seconds(3);
    stack
        .create(
            &api,
            &ann,
            json!({"title": "water the roses", "due_at": "2030-01-07T08:00:00Z",
                   "recurrence": {"rule": "FREQ=WEEKLY", "timezone": "Europe/Berlin", "mode": "on_completion"},
                   "reminders": [{"at": fires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)}]}),
        )
        .await;
    let row = browser
        .task("water the roses", false, "the task arrives over the socket")
        .await;
    let next = row
        .find(Locator::Css("time.next"))
        .await
        .expect("a recurring task shows its next occurrence");
    assert_eq!(
        next.attr("datetime").await.expect("datetime").as_deref(),
        Some("2030-01-14T08:00:00Z")
    );
    if chrono::Utc::now() + chrono::TimeDelta::milliseconds(500) < fires {
        let early = browser
            .find_all(Locator::Css("#reminders li"))
            .await
            .expect("reminders");
        assert!(early.is_empty(), "nothing shows before the reminder fires");
    }
    let reminder = browser
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::XPath(
            "//ul[@id='reminders']/li[contains(., 'water the roses')]",
        ))
        .await
        .expect("the reminder shows as it fires");
    let text = reminder.text().await.expect("text");
    assert!(text.starts_with('⏰'), "{text}");

    browser.close().await;
    stop_notifier.trigger();
    notifier
        .await
        .expect("task")
        .expect("todo-notifier ran cleanly");
    rt.stop().await;
    api.stop().await;
}
