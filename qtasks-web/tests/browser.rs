//! The dashboard in a real browser: headless Chromium, driven through chromedriver (Debian's
//! `chromium` and `chromium-driver`), against a live Redis seeded with tasks of every status.
//! It reads the rendered DOM (counts, a task's detail, the escaped script), works the actions
//! from the keyboard and with clicks, watches live updates arrive, and checks the phone
//! width, dark mode and the login.
//!
//! `QTASKS_SCREENSHOTS=docs` also writes the README's screenshots there (a relative folder is
//! the workspace's).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use qtasks::redis::RedisOptions;
use qtasks::web::Web;
use qtasks::{AddOptions, QueueConfig, QueueTasks, TaskError, TaskResult, TaskStatus, Uuid};
use qtasks_test_support::redis_url;
use qtasks_test_support::unique_prefix;
use redis::AsyncCommands;
use serde_json::{Value, json};

#[qtasks::task]
async fn dash_echo(text: String) -> String {
    text
}

#[qtasks::task]
async fn dash_fail(reason: String) -> TaskResult<()> {
    Err(TaskError::msg(reason))
}

#[qtasks::task(retry = 1)]
async fn dash_flaky(disk: String) -> TaskResult<()> {
    Err(TaskError::msg(format!("{disk}: no space left on device")))
}

#[qtasks::task]
async fn dash_sleep(secs: u64) -> u64 {
    tokio::time::sleep(Duration::from_secs(secs)).await;
    secs
}

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver and one browser session; both go when it is dropped.
struct Browser {
    client: Client,
    driver: tokio::process::Child,
    profile: PathBuf,
}

impl Browser {
    /// A headless Chromium; `None` (with a line on stderr) when it is not installed, outside CI.
    async fn start(test: &str, extra: &[&str]) -> Option<Browser> {
        let missing = [CHROMIUM, CHROMEDRIVER]
            .into_iter()
            .find(|path| !std::path::Path::new(path).exists());
        if let Some(path) = missing {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: {path} is missing (apt-get install chromium chromium-driver)"
            );
            eprintln!(
                "skipping {test}: {path} is missing (apt-get install chromium chromium-driver)"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let profile = std::env::temp_dir().join(unique_prefix("chromium-profile"));
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--window-size=1280,900".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let started = Instant::now();
        let client = loop {
            match ClientBuilder::new(connector.clone())
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(error) if started.elapsed() < Duration::from_secs(20) => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => panic!("no browser session: {error}"),
            }
        };
        Some(Browser {
            client,
            driver,
            profile,
        })
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Does `act` on the first element `css` finds. The page re-renders parts of itself as its
    /// live updates come, so an element found may be replaced before `act` reaches it (a
    /// stale element): it is found again.
    async fn on_element<T, F, Fut>(&self, css: &str, act: F) -> T
    where
        F: Fn(Element) -> Fut,
        Fut: Future<Output = Result<T, CmdError>>,
    {
        for _ in 0..20 {
            let element = self
                .client
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("{css}: {e}"));
            match act(element).await {
                Ok(done) => return done,
                Err(error) if error.is_stale_element_reference() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("{css}: {error}"),
            }
        }
        panic!("{css}: replaced 20 times in a row")
    }

    /// The text of the first element `css` finds.
    async fn text(&self, css: &str) -> String {
        self.on_element(css, |element| async move { element.text().await })
            .await
    }

    /// The text of the page's notice, once the page an action leads to has loaded (a click
    /// returns before its navigation ends).
    async fn notice(&self) -> String {
        self.text_once("p.notice").await
    }

    /// The text of the first element `css` finds, waiting until there is one.
    async fn text_once(&self, css: &str) -> String {
        let started = Instant::now();
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                return text;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no {css} at {}",
                self.client.current_url().await.unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the page's address contains `part`.
    async fn wait_url(&self, part: &str) -> String {
        let started = Instant::now();
        loop {
            let url = self.client.current_url().await.unwrap().to_string();
            if url.contains(part) {
                return url;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{url} never contained {part}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the first element `css` finds.
    async fn click(&self, css: &str) {
        self.on_element(css, |element| async move { element.click().await })
            .await;
    }

    async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    async fn script(&self, script: &str) -> Value {
        self.client.execute(script, Vec::new()).await.unwrap()
    }

    /// Waits until `css`'s text is `expected` (live updates arrive without a reload).
    async fn wait_text(&self, css: &str, expected: &str) {
        let started = Instant::now();
        loop {
            let found = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if found == expected {
                return;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let url = self.client.current_url().await.unwrap();
                let page = self.client.source().await.unwrap_or_default();
                panic!("{css} shows {found:?}, not {expected:?}, at {url}:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the page fits the window's width (tables scroll inside their own box).
    async fn fits_width(&self) -> bool {
        self.script("return document.documentElement.scrollWidth <= window.innerWidth")
            .await
            .as_bool()
            .unwrap()
    }

    async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("QTASKS_SCREENSHOTS") else {
            return;
        };
        // A relative folder is the workspace's (tests run in the crate's folder).
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(dir);
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

async fn redis_app(url: &str, prefix: &str) -> QueueTasks {
    let config = QueueConfig {
        name: prefix.to_owned(),
        max_tasks_process: 4,
        ..QueueConfig::default()
    };
    qtasks::redis::connect_with(url, config, RedisOptions::default())
        .await
        .unwrap()
}

/// Waits until the app's numbers are `expected(stats)`.
async fn until_stats(
    app: &QueueTasks,
    what: &str,
    expected: impl Fn(&qtasks::stats::QueueStats) -> bool,
) {
    let started = Instant::now();
    loop {
        let stats = app.stats().await.unwrap();
        let queue = stats.queue.expect("redis keeps stats");
        if expected(&queue) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: {queue:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The seeded tasks worth visiting.
struct Seeded {
    script: Uuid,
    plain: Uuid,
    failed: Uuid,
    flaky_last: Uuid,
    running: Uuid,
}

/// Tasks of every status: 3 success (one with a script for an argument), 2 error (one after
/// a retry), 1 retry, 1 cancel, 1 waiting (delayed), 1 running, 1 dead letter.
async fn seed(app: &QueueTasks, url: &str, prefix: &str) -> Seeded {
    let script = dash_echo::add_task(app, "<script>alert(1)</script>".into())
        .await
        .unwrap();
    let plain = dash_echo::add_task(app, "hello".into()).await.unwrap();
    dash_echo::add_task(app, "world".into()).await.unwrap();
    let failed = dash_fail::add_task(app, "disk full".into()).await.unwrap();
    let flaky = dash_flaky::add_task(app, "/dev/sda1".into()).await.unwrap();
    let later = AddOptions::default().delay(Duration::from_secs(3600));
    app.add_task_with("dash_echo", ("later",), (), later.clone())
        .await
        .unwrap();
    let cancelled = app
        .add_task_with("dash_echo", ("never",), (), later)
        .await
        .unwrap();
    assert!(app.cancel(cancelled.uuid(), "not needed").await.unwrap());
    let running = dash_sleep::add_task(app, 600).await.unwrap();
    let mut con = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = con
        .rpush(format!("{prefix}:task_queue"), "garbage")
        .await
        .unwrap();
    until_stats(app, "the seeded tasks settle", |q| {
        q.finished.success == 3
            && q.finished.error == 2
            && q.finished.retry == 1
            && q.finished.cancel == 1
            && q.running == 1
            && q.dead_letters == 1
    })
    .await;
    let first = app.get(flaky.uuid()).await.unwrap().unwrap();
    Seeded {
        script: script.uuid(),
        plain: plain.uuid(),
        failed: failed.uuid(),
        flaky_last: first.retry_child_uuid.expect("the flaky task was retried"),
        running: running.uuid(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn the_dashboard_works_in_a_real_browser() {
    let test = "the_dashboard_works_in_a_real_browser";
    let Some(url) = redis_url(test) else {
        return;
    };
    let Some(browser) = Browser::start(test, &[]).await else {
        return;
    };
    let prefix = unique_prefix("dashboard");
    let app = redis_app(&url, &prefix).await;
    app.start().await.unwrap();
    // The dashboard reads the backend through an app of its own, as `qtasks web` does; it
    // is looking before the tasks run, so its throughput chart counts them.
    let viewer = redis_app(&url, &prefix).await;
    let base = format!(
        "http://{}",
        Web::new(viewer)
            .serve("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    );
    browser.goto(&format!("{base}/")).await;
    let seeded = seed(&app, &url, &prefix).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // one more sample of the stats

    // The overview: the counts as rendered.
    browser.goto(&format!("{base}/")).await;
    assert_eq!(browser.text(".c-success dd").await, "3");
    assert_eq!(browser.text(".c-error dd").await, "2");
    assert_eq!(browser.text(".c-cancel dd").await, "1");
    assert_eq!(browser.text(".c-process dd").await, "1");
    assert_eq!(browser.count("#region-workers tbody tr").await, 1);
    assert_eq!(browser.count("svg.chart rect.bar").await, 30);
    assert!(
        browser
            .text("figcaption")
            .await
            .starts_with("7 tasks finished"),
        "{}",
        browser.text("figcaption").await
    );
    browser.screenshot("dashboard-overview.png").await;

    // A task finishing shows up without a reload (server-sent events).
    dash_echo::add_task(&app, "live".into()).await.unwrap();
    browser.wait_text(".c-success dd", "4").await;

    // The tasks page, filtered by status; then by name.
    browser.goto(&format!("{base}/tasks?status=error")).await;
    assert_eq!(browser.count("table.tasks tbody tr").await, 2);
    let names = browser
        .script("return [...document.querySelectorAll('table.tasks tbody tr td:nth-child(3)')].map(td => td.textContent).sort().join(',')")
        .await;
    assert_eq!(names, "dash_fail,dash_flaky");
    browser.goto(&format!("{base}/tasks?name=dash_echo")).await;
    assert_eq!(browser.count("table.tasks tbody tr").await, 6);

    // A task whose argument is a script: shown as text, never run.
    browser
        .goto(&format!("{base}/tasks/{}", seeded.script))
        .await;
    let args = browser.text("#region-task pre.code").await;
    assert!(args.contains("<script>alert(1)</script>"), "{args}");
    assert_eq!(
        browser
            .script("return document.querySelectorAll('script').length")
            .await,
        json!(1),
        "only the dashboard's own script"
    );
    assert!(
        browser.client.get_alert_text().await.is_err(),
        "an alert is open: the script ran"
    );

    // A failed attempt after a retry: the error and the chain of attempts, as links.
    browser
        .goto(&format!("{base}/tasks/{}", seeded.flaky_last))
        .await;
    assert!(
        browser
            .text("pre.error")
            .await
            .contains("/dev/sda1: no space left on device")
    );
    assert_eq!(browser.count("ol.chain li").await, 2);
    assert_eq!(browser.count("ol.chain li a").await, 1);
    browser.screenshot("dashboard-task.png").await;

    // Cancel the running task from the keyboard: the page says so, and its status follows live.
    browser
        .goto(&format!("{base}/tasks/{}", seeded.running))
        .await;
    browser
        .client
        .find(Locator::Css("#cancel"))
        .await
        .unwrap()
        .send_keys(&char::from(Key::Enter).to_string())
        .await
        .unwrap();
    browser.wait_text("#region-task .status", "cancel").await;
    assert!(browser.notice().await.contains("cancelled"));
    assert_eq!(
        app.get(seeded.running).await.unwrap().unwrap().status,
        TaskStatus::Cancel
    );

    // Retry a failed task: a new attempt that links back.
    browser
        .goto(&format!("{base}/tasks/{}", seeded.failed))
        .await;
    browser.click("#retry").await;
    let url = browser.wait_url("done=retried").await;
    browser.wait_text("#region-task .status", "error").await;
    let retried: Uuid = url
        .split("/tasks/")
        .nth(1)
        .and_then(|rest| rest.split('?').next())
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(retried, seeded.failed);
    assert_eq!(
        app.get(retried).await.unwrap().unwrap().retry_parent_uuid,
        Some(seeded.failed)
    );
    assert_eq!(
        app.get(seeded.failed)
            .await
            .unwrap()
            .unwrap()
            .retry_child_uuid,
        Some(retried)
    );

    // Delete a finished task's record.
    browser
        .goto(&format!("{base}/tasks/{}", seeded.plain))
        .await;
    browser.click("#delete").await;
    assert!(browser.notice().await.contains("deleted"));
    assert!(app.get(seeded.plain).await.unwrap().is_none());

    // In bulk: tick the succeeded tasks, review, confirm; each one's outcome is shown.
    browser.goto(&format!("{base}/tasks?status=success")).await;
    let ticked = browser
        .script("const boxes = [...document.querySelectorAll('table.tasks tbody input[type=checkbox]')]; boxes.forEach(b => b.click()); return boxes.length")
        .await;
    let ticked = ticked.as_u64().unwrap();
    assert!(ticked >= 2, "{ticked} rows to tick");
    browser
        .script("document.querySelector('form#bulk select').value = 'delete'")
        .await;
    browser.click("form#bulk button").await;
    // The review page comes after a submit: wait for it (the list's own heading is there
    // until it loads).
    browser
        .wait_text("h1", &format!("Delete the records of {ticked} tasks?"))
        .await;
    assert_eq!(browser.count("ul.mono li").await as u64, ticked);
    browser.click("#confirm").await;
    browser
        .wait_text("p.notice", &format!("{ticked} of {ticked} done."))
        .await;
    browser.goto(&format!("{base}/tasks?status=success")).await;
    assert_eq!(browser.count("table.tasks tbody tr").await, 0);

    // Workers, and the dead letter: dropped.
    browser.goto(&format!("{base}/workers")).await;
    assert_eq!(browser.count("#region-workers tbody tr").await, 1);
    browser.goto(&format!("{base}/dead")).await;
    assert_eq!(browser.count("tbody tr").await, 1);
    assert!(
        browser
            .text("tbody tr td:nth-child(5)")
            .await
            .contains("garbage")
    );
    browser
        .client
        .find(Locator::XPath("//button[text()='Drop']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(browser.notice().await.contains("dropped"));
    assert_eq!(browser.count("tbody tr").await, 0);

    // A phone-width window: every page fits (wide tables scroll in their own box).
    browser.client.set_window_size(390, 844).await.unwrap();
    for path in [
        "/".to_owned(),
        "/tasks".to_owned(),
        format!("/tasks/{}", seeded.flaky_last),
        "/workers".to_owned(),
    ] {
        browser.goto(&format!("{base}{path}")).await;
        assert!(browser.fits_width().await, "{path} is wider than a phone");
    }

    browser.close().await;
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_asks_for_the_token_and_follows_dark_mode() {
    let test = "the_dashboard_asks_for_the_token_and_follows_dark_mode";
    let Some(browser) = Browser::start(test, &["--blink-settings=preferredColorScheme=0"]).await
    else {
        return;
    };
    let app = QueueTasks::new();
    let base = format!(
        "http://{}",
        Web::new(app)
            .token(Some("correct horse".into()))
            .serve("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    );
    browser.goto(&format!("{base}/tasks")).await;
    assert!(browser.client.current_url().await.unwrap().path() == "/login");
    let login = |token: &'static str| {
        let client = browser.client.clone();
        async move {
            let field = client
                .find(Locator::Css("input[name=token]"))
                .await
                .unwrap();
            field.send_keys(token).await.unwrap();
            field
                .send_keys(&char::from(Key::Enter).to_string())
                .await
                .unwrap();
        }
    };
    login("wrong horse").await;
    assert!(
        browser
            .text_once("p.problem")
            .await
            .contains("not the token")
    );
    login("correct horse").await;
    browser.wait_text("h1", "Overview").await;
    // Dark mode: the page's background follows the system's preference.
    let background = browser
        .script("return getComputedStyle(document.body).backgroundColor")
        .await;
    assert_eq!(background, json!("rgb(17, 20, 24)"));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_mounted_under_a_prefix() {
    let test = "the_dashboard_works_mounted_under_a_prefix";
    let Some(browser) = Browser::start(test, &[]).await else {
        return;
    };
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let failed = dash_fail::add_task(&app, "disk full".into()).await.unwrap();
    let _ = failed.result(Duration::from_secs(5)).await;
    // An axum app of the user's own, the dashboard nested under /admin beside its routes.
    let router = axum::Router::new()
        .route("/", axum::routing::get(|| async { "the shop" }))
        .nest("/admin", Web::new(app.clone()).router())
        .nest(
            "/secure",
            Web::new(app.clone()).token(Some("letmein".into())).router(),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, service).await.unwrap();
    });

    browser.goto(&format!("{base}/admin")).await;
    browser.wait_text("h1", "Overview").await;
    // Its assets came from under the prefix: the stylesheet applies, the script runs.
    let styled = browser
        .script("return getComputedStyle(document.querySelector('nav')).display")
        .await;
    assert_eq!(
        styled,
        json!("flex"),
        "the stylesheet did not load under /admin"
    );
    assert_eq!(browser.text("#live-state").await, "live updates on");
    // Live updates come through the prefix too.
    dash_fail::add_task(&app, "again".into()).await.unwrap();
    browser.wait_text(".c-error dd", "2").await;

    // The navigation, a task's page and an action all stay under /admin.
    browser.click("nav a[href='tasks']").await;
    browser.wait_url("/admin/tasks").await;
    browser
        .goto(&format!("{base}/admin/tasks?status=error"))
        .await;
    browser.click("table.tasks tbody tr a").await;
    browser.wait_url("/admin/tasks/").await;
    let skip = browser
        .script("return document.querySelector('a.skip').href")
        .await;
    assert!(
        skip.as_str().unwrap().contains("/admin/tasks/")
            && skip.as_str().unwrap().ends_with("#main"),
        "{skip}"
    );
    browser.click("#retry").await;
    assert!(
        browser.notice().await.contains("new attempt"),
        "{}",
        browser.notice().await
    );
    let url = browser.wait_url("done=retried").await;
    assert!(url.starts_with(&format!("{base}/admin/tasks/")), "{url}");
    // The front page's link leads back under the prefix (axum serves a nested root at
    // `/admin`, not `/admin/`).
    browser
        .client
        .find(Locator::XPath("//nav//a[text()='Overview']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_text("h1", "Overview").await;
    assert_eq!(browser.wait_url("/admin").await, format!("{base}/admin"));

    // With a token: the login page and the way back after it stay under the prefix.
    browser.goto(&format!("{base}/secure/tasks")).await;
    browser.wait_url("/secure/login").await;
    let field = browser
        .client
        .find(Locator::Css("input[name=token]"))
        .await
        .unwrap();
    field.send_keys("letmein").await.unwrap();
    field
        .send_keys(&char::from(Key::Enter).to_string())
        .await
        .unwrap();
    browser.wait_text("h1", "Overview").await;
    assert_eq!(browser.wait_url("/secure").await, format!("{base}/secure"));

    // The user's own route beside it is untouched.
    browser.goto(&format!("{base}/")).await;
    assert_eq!(browser.text("body").await, "the shop");
    browser.close().await;
    app.stop().await.unwrap();
}
