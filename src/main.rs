//! The `ticketgate` command: serve (the default), migrate, mint-jwt.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use secrecy::ExposeSecret;
use ticketgate::channels::ClientPublish;
use ticketgate::config::Settings;
use ticketgate::db::migrations::{self, MigrationContext};
use ticketgate::jwt::JwtSigner;
use ticketgate::startup::Application;

/// A WebSocket gateway with two-phase authentication: a short-lived ticket from
/// `GET /token/ws` opens `/demo?token=<ticket>`, and the first message must carry the JWT.
#[derive(Parser)]
#[command(name = "ticketgate", version = ticketgate::build_info::LONG_VERSION, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default when no command is given).
    Serve,
    /// Apply pending MongoDB migrations (migrations/) and exit. Needs MONGODB_URI.
    Migrate,
    /// Print the effective configuration (secrets redacted) and where each value came from:
    /// the environment, the CONFIG_FILE, or the default.
    Config {
        /// Only validate the configuration: exit 0 when it is valid, 1 with the reason when not.
        #[arg(long)]
        check: bool,
    },
    /// Print an HS256 JWT signed with JWT_SECRET, for development and tests.
    MintJwt {
        /// The user id, written as the `sub` claim.
        #[arg(long)]
        sub: String,
        /// Lifetime in seconds, written as `exp` = now + this.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

/// jemalloc, told (below) to return unused pages to the system after about a second: after a
/// burst of connections the gateway's memory goes back down. glibc's malloc keeps freed memory
/// in per-thread arenas (measured in tests/api/hostile.rs: 2,000 sockets left RSS at its peak
/// with glibc, within 3 MiB of the baseline with this).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this C string symbol at start.
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);
// SAFETY: it points at a string literal, immutable for the whole program.
unsafe impl Sync for MallocConf {}

#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: MallocConf =
    MallocConf(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

fn main() -> ExitCode {
    // The settings' part of the help comes from the table the parser reads, so it cannot drift.
    let matches = Cli::command()
        .after_long_help(ticketgate::config::docs::help_text())
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config { check } => print_config(check),
        command => run(command),
    }
}

/// The commands that need valid settings (and the log).
fn run(command: Command) -> ExitCode {
    let settings = match Settings::from_process_env() {
        Ok(settings) => settings,
        Err(e) => return fail(&format!("configuration: {e}")),
    };
    ticketgate::logging::init(&settings.log_filter, settings.log_format);
    match command {
        Command::Config { check } => print_config(check),
        Command::Serve => actix_web::rt::System::new().block_on(serve(settings)),
        Command::Migrate => actix_web::rt::System::new().block_on(migrate(settings)),
        Command::MintJwt { sub, ttl_secs } => mint_jwt(&settings, &sub, ttl_secs),
    }
}

async fn serve(settings: Settings) -> ExitCode {
    let dev_secret = match (&settings.jwt.hs256_secret, settings.jwt.dev_mode) {
        (Some(secret), true) => Some(secret.expose_secret().clone()),
        _ => None,
    };
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => return fail(&e.to_string()),
    };
    if let Some(secret) = dev_secret {
        announce_dev_mode(&secret, app.port());
    }
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("server: {e}")),
    }
}

/// Dev mode: no JWT key was configured. The demo JWT goes to stdout for the developer to copy;
/// it is signed with a secret that dies with the process, so it opens nothing else.
fn announce_dev_mode(secret: &[u8], port: u16) {
    log::warn!(
        "DEV MODE: no JWT key is configured (JWT_SECRET), so a random secret was made for this \
         process. Any JWT it signs dies with it. Never run like this in production."
    );
    // It grants the demo namespace, so the demo page's channel panel works at once.
    let now = ticketgate::clock::unix_now();
    let jwt = JwtSigner::hs256(secret).sign(&ticketgate::jwt::Claims {
        sub: "demo-user".into(),
        exp: now + 24 * 3600,
        iat: Some(now),
        channels: Some(vec![format!("{}:*", ticketgate::channels::DEMO_NAMESPACE)]),
        ..Default::default()
    });
    println!(
        "\n=== ticketgate dev mode ===\n\
         Dev JWT for user \"demo-user\" (valid 24h, this process only):\n\n{jwt}\n\n\
         Open the demo, already signed in (it may subscribe to demo:* channels):\n  http://127.0.0.1:{port}/#jwt={jwt}\n\n\
         Or by hand:\n  curl -H \"Authorization: Bearer {jwt}\" http://127.0.0.1:{port}/token/ws\n\
         then open ws://127.0.0.1:{port}/demo?token=<token> and send {{\"type\":\"jwt\",\"token\":\"<the JWT>\"}}\n"
    );
}

async fn migrate(settings: Settings) -> ExitCode {
    let Some(mongo) = &settings.database.mongodb else {
        return fail("MONGODB_URI is not set: the in-process store has nothing to migrate");
    };
    let db = match ticketgate::db::connect(mongo, settings.database.timeout).await {
        Ok(db) => db,
        Err(e) => return fail(&e.to_string()),
    };
    match migrations::apply(&db, &MigrationContext::of(&settings)).await {
        Ok(report) => {
            println!(
                "migrations applied: {:?}; TTL indexes updated: {:?}",
                report.applied, report.ttl_updated
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

fn mint_jwt(settings: &Settings, sub: &str, ttl_secs: u64) -> ExitCode {
    let (Some(secret), false) = (&settings.jwt.hs256_secret, settings.jwt.dev_mode) else {
        return fail("JWT_SECRET is not set: there is no key to sign with");
    };
    if sub.is_empty() {
        return fail("--sub must not be empty");
    }
    println!(
        "{}",
        JwtSigner::hs256(secret.expose_secret()).mint(sub, ttl_secs)
    );
    ExitCode::SUCCESS
}

/// `ticketgate config [--check]`.
fn print_config(check: bool) -> ExitCode {
    let effective = match ticketgate::config::effective_from_process_env() {
        Ok(effective) => effective,
        Err(e) => return fail(&format!("configuration: {e}")),
    };
    if check {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let width = effective
        .settings
        .iter()
        .map(|(s, _, _)| s.name.len())
        .max()
        .unwrap_or(0);
    for (setting, value, origin) in effective.settings {
        let live = if ticketgate::reload::LIVE.contains(&setting.name) {
            "; SIGHUP reads the file again"
        } else {
            ""
        };
        println!("{:width$}  {value}  ({origin}{live})", setting.name);
    }
    println!(
        "SIGHUP reloads the channel namespaces ([channels] in CONFIG_FILE) and the JWT key \
         files; every other setting takes a restart."
    );
    println!("channel namespaces ([channels] in CONFIG_FILE; SIGHUP reloads them):");
    for (name, options) in effective.namespaces.listed() {
        let name = if name.is_empty() { "(default)" } else { &name };
        let (history_size, history_ttl_secs) = options
            .history
            .map_or((0, 0), |history| (history.size, history.ttl_secs));
        let (client_publish, publish_proxy) = match options.client_publish {
            ClientPublish::Off => (false, false),
            ClientPublish::Granted => (true, false),
            ClientPublish::GrantedOrProxied => (true, true),
        };
        println!(
            "  {name}  public={} presence={} join_leave={} history_size={history_size} \
             history_ttl_secs={history_ttl_secs} client_publish={client_publish} \
             publish_proxy={publish_proxy}",
            options.public, options.presence, options.join_leave
        );
    }
    ExitCode::SUCCESS
}

fn fail(message: &str) -> ExitCode {
    eprintln!("ticketgate: {message}");
    ExitCode::FAILURE
}
