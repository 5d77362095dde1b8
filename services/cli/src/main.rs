//! `petrel`: the command-line tool for Petrel.

mod alerts;
mod batch;
mod bench;
mod bench_monitor;
mod bench_train;
mod demo;
mod drift;
mod package;
mod schedules;
mod traffic;
mod train;
mod upload;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use petrel_api::ApiClient;
use petrel_api::ingest::{IngestRequest, IngestResponse, UploadSpec};
use petrel_api::monitor::ReportList;
use petrel_events::payloads::Alert;
use petrel_ml::{DatasetPurpose, Schema};

#[derive(Parser, Debug)]
#[command(
    name = "petrel",
    version,
    about = "Petrel: the ML lifecycle as event-driven services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the whole loop locally: start the six services, ingest penguins, train, serve,
    /// send normal then drifted traffic, and exit 0 once an alert arrives.
    Demo(demo::DemoArgs),
    /// Validate and store a CSV file as a dataset (announces data.ready).
    Ingest(IngestArgs),
    /// Train a model on an ingested dataset and follow the job with a progress bar (trials,
    /// epochs, ETA); prints the version and the promotion decision. Ctrl-C cancels it.
    Train(train::TrainArgs),
    /// Send rows sampled from a CSV to the predictor, then their true labels to the labeler.
    Traffic(traffic::TrafficArgs),
    /// Score a CSV in bulk with the predictor, with a progress bar; prints the output URI and
    /// the registry run.
    Batch(batch::BatchArgs),
    /// Follow alerts as they arrive (`tail`, a JetStream consumer of `alerts.>`), or list them
    /// from the monitor (`list`).
    Alerts(alerts::AlertsArgs),
    /// Print the monitor's latest window reports.
    Reports(ReportsArgs),
    /// Measure the predictor and the model code (see docs/benchmarks.md).
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Compare two CSV files column by column for drift (exit 0 either way, 2 on bad input).
    Drift(drift::DriftArgs),
    /// Work with registered models.
    #[command(subcommand)]
    Models(Models),
    /// Manage ingest's schedules: a source ingested once per interval.
    #[command(subcommand)]
    Schedules(schedules::Schedules),
    /// Re-create a schedule's intervals in a range (`--reprocess failed` runs failed ones
    /// again; `--dry-run` only says what would happen).
    Backfill(schedules::BackfillArgs),
    /// Generate seeded, labelled product reviews as CSV (product, review, sentiment): the text
    /// model's simulated feed; --shift draws sentiment words from an unseen vocabulary.
    Reviews(ReviewsArgs),
    /// Generate seeded penguins as CSV, resampled from data/penguins.csv with optional noise,
    /// drift and missing values: a simulated feed, or a file of any size to load-test ingest.
    Penguins(PenguinsArgs),
}

#[derive(Subcommand, Debug)]
enum Models {
    /// Write one version (NAME@ALIAS or NAME/VERSION) as a gzip tarball that
    /// `petrel-predictor serve` runs (SageMaker's model.tar.gz).
    Package(package::PackageArgs),
}

#[derive(clap::Args, Debug)]
struct IngestArgs {
    /// The CSV file.
    #[arg(long, default_value = "data/penguins.csv")]
    file: PathBuf,
    /// Dataset name (also the name of the model trained from it); `penguins` by default,
    /// `digits` with --digits, `reviews` with --reviews, `images` with --idx-images.
    #[arg(long)]
    name: Option<String>,
    /// JSON schema file: {"features":[{"name":..,"kind":"numeric"|"categorical"|"text"}, or
    /// {"name":..,"kind":"image","height":..,"width":..,"max_value":..}], "target":..}.
    /// Defaults to the penguins schema, or the schema of --digits, --reviews or --idx-images.
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Ingest the bundled handwritten digits (data/digits.csv: 1,797 8x8 images, pixels 0..16,
    /// target `digit`) for the image CNN.
    #[arg(long, conflicts_with_all = ["reviews", "idx_images"])]
    digits: bool,
    /// Ingest images from an IDX file (idx3-ubyte, gzipped or not, as Fashion-MNIST and MNIST
    /// ship them), with --idx-labels; the schema is one `image` column of the file's size,
    /// pixels 0..255, target `label`.
    #[arg(long, requires = "idx_labels", conflicts_with = "reviews")]
    idx_images: Option<PathBuf>,
    /// The IDX label file (idx1-ubyte) that goes with --idx-images.
    #[arg(long, requires = "idx_images")]
    idx_labels: Option<PathBuf>,
    /// With --idx-images: name the labels with Fashion-MNIST's classes (T-shirt/top, Trouser,
    /// ...) instead of their numbers.
    #[arg(long, requires = "idx_images")]
    fashion: bool,
    /// Instead of a file, have ingest generate this many labelled reviews (product, review,
    /// sentiment) for the text model, from --seed, --shift and --noise.
    #[arg(long, value_name = "ROWS")]
    reviews: Option<usize>,
    #[command(flatten)]
    feed: ReviewFeedArgs,
    /// What the dataset is for: training (the trainer trains on it), scoring (the predictor
    /// serving a model of the same name scores it in bulk) or reference.
    #[arg(long, default_value = "training", value_parser = parse_purpose)]
    purpose: DatasetPurpose,
    /// JSON file of validation rules beyond the schema: {"columns": {"bill_length_mm":
    /// {"min": 25, "max": 70}, "island": {"categories": [...]}}, "max_rejected_share": 0.1,
    /// "max_duplicate_share": 0.0}.
    #[arg(long)]
    checks: Option<PathBuf>,
    #[arg(
        long,
        env = "PETREL_INGEST_URL",
        default_value = "http://127.0.0.1:8083"
    )]
    ingest_url: String,
}

/// The settings of the review generator.
#[derive(clap::Args, Debug, Clone)]
struct ReviewFeedArgs {
    /// Seed of the review generator: the same settings give the same rows.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Share of sentiment words drawn from a vocabulary training never saw (drift), in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    shift: f64,
    /// Share of labels flipped at random, in [0, 0.5].
    #[arg(long, default_value_t = 0.05)]
    noise: f64,
}

impl ReviewFeedArgs {
    fn spec(&self, rows: usize) -> petrel_ml::ReviewSpec {
        petrel_ml::ReviewSpec {
            rows,
            seed: self.seed,
            shift: self.shift,
            noise: self.noise,
        }
    }
}

#[derive(clap::Args, Debug)]
struct ReviewsArgs {
    /// Reviews to generate.
    #[arg(long, default_value_t = 1000)]
    rows: usize,
    #[command(flatten)]
    feed: ReviewFeedArgs,
    /// Write the CSV here instead of to standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct PenguinsArgs {
    /// Rows to generate.
    #[arg(long, default_value_t = 1000)]
    rows: usize,
    /// The seed: the same arguments give the same rows.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Shift of every measurement, in its standard deviations.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    drift: f64,
    /// Gaussian noise on each measurement, in its standard deviations.
    #[arg(long, default_value_t = 0.0)]
    noise: f64,
    /// Share of measurements left blank.
    #[arg(long, default_value_t = 0.0)]
    missing: f64,
    /// Write the CSV here instead of to standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ReportsArgs {
    #[arg(
        long,
        env = "PETREL_MONITOR_URL",
        default_value = "http://127.0.0.1:8086"
    )]
    monitor_url: String,
    #[arg(long, default_value_t = 10)]
    limit: usize,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => demo::run(a).await,
        Command::Ingest(a) => ingest(a).await,
        Command::Train(a) => train::run(a).await,
        Command::Traffic(a) => traffic::run_cli(a).await,
        Command::Batch(a) => batch::run(a).await,
        Command::Alerts(a) => alerts::run(a).await,
        Command::Reports(a) => reports(a).await,
        Command::Bench(b) => bench::run(b).await,
        Command::Models(Models::Package(a)) => package::run(a).await,
        Command::Drift(a) => drift::run(a),
        Command::Reviews(a) => reviews(a),
        Command::Penguins(a) => penguins(a),
        Command::Schedules(c) => schedules::run(c).await,
        Command::Backfill(a) => schedules::backfill(a).await,
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn parse_purpose(s: &str) -> Result<DatasetPurpose, String> {
    DatasetPurpose::parse(s).ok_or_else(|| format!("{s:?} is not training, scoring or reference"))
}

fn reviews(a: ReviewsArgs) -> anyhow::Result<()> {
    let csv = petrel_ml::generate_reviews(&a.feed.spec(a.rows))?;
    match &a.out {
        Some(path) => {
            std::fs::write(path, csv).with_context(|| format!("cannot write {}", path.display()))?
        }
        None => {
            use std::io::Write as _;
            std::io::stdout()
                .lock()
                .write_all(csv.as_bytes())
                .context("cannot write the reviews")?;
        }
    }
    Ok(())
}

fn penguins(a: PenguinsArgs) -> anyhow::Result<()> {
    let spec = petrel_ml::PenguinSpec {
        rows: a.rows,
        seed: a.seed,
        drift: a.drift,
        noise: a.noise,
        missing: a.missing,
    };
    let write = |out: &mut dyn std::io::Write| {
        petrel_ml::write_penguins(&spec, std::io::BufWriter::with_capacity(1 << 20, out))
    };
    match &a.out {
        Some(path) => {
            let mut file = std::fs::File::create(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            write(&mut file).with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => write(&mut std::io::stdout().lock()).context("cannot write the penguins")?,
    }
    Ok(())
}

async fn ingest(a: IngestArgs) -> anyhow::Result<()> {
    let read = |path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    // What to send: inline text, a generator, or a file streamed from disk.
    let (csv, generate, file, schema, name) = if let Some(rows) = a.reviews {
        let generator = petrel_api::ingest::Generator::Reviews(a.feed.spec(rows));
        (None, Some(generator), None, Schema::reviews(), "reviews")
    } else if let (Some(images), Some(labels)) = (&a.idx_images, &a.idx_labels) {
        let images = petrel_ml::image::read_idx_images(&read(images)?)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{}", images.display()))?;
        let labels = petrel_ml::image::read_idx_labels(&read(labels)?)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{}", labels.display()))?;
        let names = a
            .fashion
            .then_some(&petrel_ml::image::FASHION_MNIST_CLASSES[..]);
        let csv =
            petrel_ml::image::idx_to_csv(&images, &labels, names).map_err(anyhow::Error::msg)?;
        let schema = Schema {
            features: vec![petrel_ml::Column::image(
                "image",
                images.height,
                images.width,
                255.0,
            )],
            target: "label".to_owned(),
        };
        let csv = String::from_utf8(csv).context("the IDX images did not convert to text")?;
        (Some(csv), None, None, schema, "images")
    } else {
        let file = if a.digits {
            PathBuf::from("data/digits.csv")
        } else {
            a.file.clone()
        };
        let (schema, name) = if a.digits {
            (Schema::digits(), "digits")
        } else {
            (Schema::penguins(), "penguins")
        };
        (None, None, Some(file), schema, name)
    };
    let schema = match &a.schema {
        Some(p) => {
            serde_json::from_slice(&read(p)?).context("the schema file is not a valid schema")?
        }
        None => schema,
    };
    let name = a.name.clone().unwrap_or_else(|| name.to_owned());
    let checks = match &a.checks {
        Some(p) => serde_json::from_slice(&read(p)?)
            .with_context(|| format!("{} is not a set of checks", p.display()))?,
        None => Default::default(),
    };
    let client = ApiClient::new(&a.ingest_url);
    let resp: IngestResponse = match file {
        Some(file) => {
            let spec = UploadSpec {
                name,
                schema,
                purpose: a.purpose,
                checks,
            };
            upload::dataset(&client, &spec, &file).await?
        }
        None => {
            client
                .post(
                    "/v1/datasets",
                    &IngestRequest {
                        name,
                        schema,
                        csv,
                        path: None,
                        uri: None,
                        generate,
                        purpose: a.purpose,
                        checks,
                    },
                )
                .await?
        }
    };
    print_ingest(&resp);
    Ok(())
}

fn print_ingest(resp: &IngestResponse) {
    let d = &resp.dataset;
    println!(
        "dataset {} v{} ({}): {} rows accepted, {} rejected{}",
        d.name,
        d.version,
        d.id,
        d.row_count,
        d.rejected_rows,
        if resp.created {
            ""
        } else {
            " (already ingested; nothing new)"
        }
    );
    for e in resp.errors.iter().take(5) {
        println!("  line {}: {}", e.line, e.message);
    }
}

fn format_alert(a: &Alert) -> String {
    alerts::format(a)
}

async fn reports(a: ReportsArgs) -> anyhow::Result<()> {
    let list: ReportList = ApiClient::new(&a.monitor_url)
        .get(&format!("/v1/reports?limit={}", a.limit))
        .await?;
    for r in list.reports.iter().rev() {
        println!("{}", demo::format_report(r));
    }
    Ok(())
}
