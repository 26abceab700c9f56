//! Each format parses its provider's documented sample; malformed documents are refused
//! whole, never in part and never with a panic.

use super::*;

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|n| n.parse().unwrap()).collect()
}

fn parsed(format: Format, body: &str) -> Result<Vec<IpNet>, BodyError> {
    parse(format, body.as_bytes(), &Filters::default())
}

/// The sample response in Harness's documentation.
const HARNESS: &str = r#"{
  "status": "SUCCESS",
  "data": {
    "ipAddresses": [
      "34.102.159.101",
      "127.0.0.3",
      "127.0.0.2"
    ]
  },
  "metaData": null,
  "correlationId": "fcfff224-052a-4196-9aa0-aec8d1fd8811"
}"#;

#[test]
fn harness_reads_its_documented_sample_and_the_free_tier_empty_list() {
    assert_eq!(
        parsed(Format::Harness, HARNESS).unwrap(),
        nets(&["34.102.159.101/32", "127.0.0.2/32", "127.0.0.3/32"])
    );
    let free = r#"{"status":"SUCCESS","data":{"ipAddresses":[]},"metaData":null}"#;
    assert_eq!(parsed(Format::Harness, free).unwrap(), []);
    for bad in [
        r#"{"status":"ERROR","code":"INVALID_TOKEN","message":"Token is not valid"}"#,
        r#"{"status":"SUCCESS","data":null}"#,
        r#"{"status":"SUCCESS","data":{"ipAddresses":"34.102.159.101"}}"#,
        r#"{"status":"SUCCESS","data":{"ipAddresses":["34.102.159.101","not-an-ip"]}}"#,
        r#"{"status":"SUCCESS","data":{"ipAddresses":["0.0.0.0/0"]}}"#,
        "<html>502 Bad Gateway</html>",
        "",
    ] {
        assert!(parsed(Format::Harness, bad).is_err(), "{bad}");
    }
    let error = parsed(
        Format::Harness,
        r#"{"status":"SUCCESS","data":{"ipAddresses":["34.102.159.101","10.0.0.300"]}}"#,
    )
    .unwrap_err();
    assert!(
        error.to_string().starts_with("data.ipAddresses[1]: "),
        "{error}"
    );
}

#[test]
fn text_takes_one_network_per_line_with_comments() {
    let body = "\u{feff}# provider egress\n203.0.113.0/24\n\n  198.51.100.7   # a host\r\n2001:db8::/32\n203.0.113.9/24\n";
    assert_eq!(
        parsed(Format::Text, body).unwrap(),
        nets(&["198.51.100.7/32", "203.0.113.0/24", "2001:db8::/32"])
    );
    let error = parsed(Format::Text, "203.0.113.0/24\nhello world\n").unwrap_err();
    assert!(error.to_string().starts_with("line 2: "), "{error}");
    assert!(parsed(Format::Text, "10.0.0.0/8 10.1.0.0/16\n").is_err());
    assert!(parsed(Format::Text, "::/0\n").is_err());
    assert!(parse(Format::Text, &[0xff, 0xfe, 0x00], &Filters::default()).is_err());
}

#[test]
fn csv_reads_what_export_writes() {
    let body = "ip_address,description,ports,expires_at\n203.0.113.0/24,office,22/tcp,\n2001:db8::1,\"a, b\",,\n";
    assert_eq!(
        parsed(Format::Csv, body).unwrap(),
        nets(&["203.0.113.0/24", "2001:db8::1/128"])
    );
    assert!(parsed(Format::Csv, "address\n10.0.0.1\n").is_err());
    assert!(parsed(Format::Csv, "ip_address,description\nnope,x\n").is_err());
}

#[test]
fn json_takes_the_strings_its_path_selects() {
    let filters = Filters {
        path: Some("$.egress[*].cidr".into()),
        ..Filters::default()
    };
    let body =
        r#"{"egress":[{"cidr":"192.0.2.0/24"},{"cidr":"2001:db8::/48"}],"other":["10.0.0.1"]}"#;
    assert_eq!(
        parse(Format::Json, body.as_bytes(), &filters).unwrap(),
        nets(&["192.0.2.0/24", "2001:db8::/48"])
    );
    let not_string = r#"{"egress":[{"cidr":42}]}"#;
    let error = parse(Format::Json, not_string.as_bytes(), &filters).unwrap_err();
    assert!(
        error.to_string().contains("$['egress'][0]['cidr']"),
        "{error}"
    );
    assert!(parse(Format::Json, b"{", &filters).is_err());
    assert!(json::check_path("$.egress[").is_err());
}

/// A cut of https://ip-ranges.amazonaws.com/ip-ranges.json as documented.
const AWS: &str = r#"{
  "syncToken": "1731565329",
  "createDate": "2024-11-14-06-22-09",
  "prefixes": [
    {"ip_prefix": "3.5.140.0/22", "region": "ap-northeast-2", "service": "AMAZON", "network_border_group": "ap-northeast-2"},
    {"ip_prefix": "52.94.76.0/22", "region": "eu-west-1", "service": "EC2", "network_border_group": "eu-west-1"},
    {"ip_prefix": "13.248.118.0/24", "region": "eu-west-1", "service": "AMAZON", "network_border_group": "eu-west-1"}
  ],
  "ipv6_prefixes": [
    {"ipv6_prefix": "2a05:d07a:a000::/40", "region": "eu-south-1", "service": "AMAZON", "network_border_group": "eu-south-1"},
    {"ipv6_prefix": "2600:1f14::/35", "region": "eu-west-1", "service": "EC2", "network_border_group": "eu-west-1"}
  ]
}"#;

#[test]
fn aws_filters_by_service_and_region() {
    assert_eq!(parsed(Format::Aws, AWS).unwrap().len(), 5);
    let filters = Filters {
        services: vec!["ec2".into()],
        regions: vec!["eu-west-1".into()],
        ..Filters::default()
    };
    assert_eq!(
        parse(Format::Aws, AWS.as_bytes(), &filters).unwrap(),
        nets(&["52.94.76.0/22", "2600:1f14::/35"])
    );
    assert!(parsed(
        Format::Aws,
        r#"{"prefixes":[{"ip_prefix":"3.5.140.0/22"}]}"#
    )
    .is_err());
}

/// A cut of https://www.gstatic.com/ipranges/cloud.json.
const GCP: &str = r#"{
  "syncToken": "1731600000000",
  "creationTime": "2024-11-14T08:00:00.000000",
  "prefixes": [
    {"ipv4Prefix": "34.80.0.0/15", "service": "Google Cloud", "scope": "asia-east1"},
    {"ipv4Prefix": "34.89.0.0/17", "service": "Google Cloud", "scope": "europe-west3"},
    {"ipv6Prefix": "2600:1900:4080::/44", "service": "Google Cloud", "scope": "europe-west3"}
  ]
}"#;

#[test]
fn gcp_filters_by_scope() {
    let filters = Filters {
        regions: vec!["europe-west3".into()],
        ..Filters::default()
    };
    assert_eq!(
        parse(Format::Gcp, GCP.as_bytes(), &filters).unwrap(),
        nets(&["34.89.0.0/17", "2600:1900:4080::/44"])
    );
    assert_eq!(parsed(Format::Gcp, GCP).unwrap().len(), 3);
    let both =
        r#"{"prefixes":[{"ipv4Prefix":"34.80.0.0/15","ipv6Prefix":"2600::/44","scope":"x"}]}"#;
    assert!(parsed(Format::Gcp, both).is_err());
}

/// A cut of https://api.github.com/meta.
const GITHUB: &str = r#"{
  "verifiable_password_authentication": false,
  "ssh_key_fingerprints": {"SHA256_ED25519": "+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU"},
  "hooks": ["192.30.252.0/22", "185.199.108.0/22", "2a0a:a440::/29"],
  "web": ["192.30.252.0/22", "140.82.112.0/20"],
  "actions": ["4.148.0.0/16"],
  "domains": {"website": ["*.github.com"]}
}"#;

#[test]
fn github_takes_the_named_lists_and_refuses_a_missing_one() {
    let keys = |keys: &[&str]| Filters {
        keys: keys.iter().map(|k| k.to_string()).collect(),
        ..Filters::default()
    };
    assert_eq!(
        parse(Format::Github, GITHUB.as_bytes(), &keys(&["hooks", "web"])).unwrap(),
        nets(&[
            "140.82.112.0/20",
            "185.199.108.0/22",
            "192.30.252.0/22",
            "2a0a:a440::/29"
        ])
    );
    assert!(parse(Format::Github, GITHUB.as_bytes(), &keys(&["pages"])).is_err());
    assert!(parse(Format::Github, GITHUB.as_bytes(), &keys(&["domains"])).is_err());
    assert!(parse(
        Format::Github,
        GITHUB.as_bytes(),
        &keys(&["verifiable_password_authentication"])
    )
    .is_err());
}

#[test]
fn cloudflare_fastly_and_atlassian_read_their_documented_shapes() {
    let cloudflare = r#"{"result":{"ipv4_cidrs":["173.245.48.0/20","103.21.244.0/22"],"ipv6_cidrs":["2400:cb00::/32"],"etag":"38f79d050aa027e3be3865e495dcc9bc"},"success":true,"errors":[],"messages":[]}"#;
    assert_eq!(parsed(Format::Cloudflare, cloudflare).unwrap().len(), 3);
    assert!(parsed(
        Format::Cloudflare,
        r#"{"result":null,"success":false,"errors":[{"code":10000}]}"#
    )
    .is_err());

    let fastly =
        r#"{"addresses":["23.235.32.0/20","43.249.72.0/22"],"ipv6_addresses":["2a04:4e40::/32"]}"#;
    assert_eq!(parsed(Format::Fastly, fastly).unwrap().len(), 3);
    assert!(parsed(Format::Fastly, r#"{"ipv6_addresses":[]}"#).is_err());

    let atlassian = r#"{"creationDate":"2024-11-14T01:00:00.000000","syncToken":1731546000,"items":[
        {"network":"13.52.5.0","mask_len":25,"cidr":"13.52.5.0/25","mask":"255.255.255.128","region":["us-west-1"],"product":["jira","confluence"],"direction":["egress","ingress"]},
        {"network":"104.192.136.0","mask_len":21,"cidr":"104.192.136.0/21","mask":"255.255.248.0","region":["us-east-1"],"product":["bitbucket"],"direction":["ingress"]},
        {"cidr":"185.166.140.0/22","product":["bitbucket"]}
    ]}"#;
    assert_eq!(
        parsed(Format::Atlassian, atlassian).unwrap(),
        nets(&["13.52.5.0/25", "185.166.140.0/22"]),
        "egress ranges only"
    );
    let jira = Filters {
        services: vec!["jira".into()],
        ..Filters::default()
    };
    assert_eq!(
        parse(Format::Atlassian, atlassian.as_bytes(), &jira).unwrap(),
        nets(&["13.52.5.0/25"])
    );
}

#[test]
fn a_body_listing_more_than_the_bound_is_refused_whole() {
    let mut body = String::new();
    for i in 0..=MAX_FEED_ENTRIES as u32 {
        body.push_str(&format!("{}\n", std::net::Ipv4Addr::from(0x0a00_0000 + i)));
    }
    assert_eq!(parsed(Format::Text, &body), Err(BodyError::TooMany));
}

#[test]
fn no_prefix_of_any_document_panics_any_parser() {
    let formats = [
        (Format::Harness, HARNESS),
        (Format::Aws, AWS),
        (Format::Gcp, GCP),
        (Format::Github, GITHUB),
    ];
    let filters = Filters {
        keys: vec!["hooks".into()],
        path: Some("$..*".into()),
        ..Filters::default()
    };
    for (format, body) in formats {
        for cut in 0..body.len() {
            for format in [format, Format::Text, Format::Csv, Format::Json] {
                let _ = parse(format, &body.as_bytes()[..cut], &filters);
            }
        }
    }
}

#[test]
fn the_elastic_io_presets_list_the_documented_addresses() {
    let eu = presets::preset("elastic.io-eu").unwrap();
    assert_eq!(eu.networks, ["34.89.196.206/32", "34.159.187.160/32"]);
    let us = presets::preset("elastic.io-us").unwrap();
    assert_eq!(us.networks, ["35.245.125.178/32"]);
    for preset in presets::PRESETS {
        for network in preset.networks {
            assert!(crate::config::parse_network(network).is_ok(), "{network}");
        }
    }
}

#[test]
fn feed_config_is_validated_with_its_line() {
    use std::path::Path;
    let config = |feeds: &str| {
        crate::config::Config::parse(
            Path::new("t.toml"),
            &format!("interfaces = [\"lo\"]\nmode = \"monitor\"\n{feeds}"),
        )
    };
    let good = config(
        "[[feed]]\nname = \"harness-ci\"\nformat = \"harness\"\nurl = \"https://app.harness.io/gateway/ci/ips/allowlist?accountIdentifier=A\"\napi_key_file = \"/etc/allowlist/harness.key\"\nrefresh = \"15m\"\nports = [\"22/tcp\"]\n[[feed]]\nname = \"elastic-eu\"\npreset = \"elastic.io-eu\"\n",
    )
    .unwrap();
    assert_eq!(good.feeds.len(), 2);
    assert_eq!(good.feeds[0].refresh_secs, 900);
    assert_eq!(
        good.feeds[1].description,
        "elastic.io egress, app.elastic.io (EU)"
    );
    for (feeds, line, says) in [
        ("[[feed]]\nname = \"x\"\nformat = \"harness\"\nurl = \"https://h\"\napi_key = \"s3cret\"\n", 7, "secrets are not kept in the config"),
        ("[[feed]]\nname = \"config\"\npreset = \"elastic.io-eu\"\n", 4, "cannot be called"),
        ("[[feed]]\nname = \"x\"\npreset = \"elastic.io-mars\"\n", 5, "unknown preset"),
        ("[[feed]]\nname = \"x\"\nformat = \"json\"\nurl = \"https://h\"\n", 4, "needs path"),
        ("[[feed]]\nname = \"x\"\nformat = \"text\"\nurl = \"ftp://h\"\n", 6, "https://"),
        ("[[feed]]\nname = \"x\"\nformat = \"text\"\nurl = \"https://h\"\nrefresh = \"1s\"\n", 7, "refresh"),
        ("[[feed]]\nname = \"x\"\nformat = \"github\"\nurl = \"https://h\"\n", 4, "needs keys"),
        ("[[feed]]\nname = \"x\"\npreset = \"elastic.io-eu\"\n[[feed]]\nname = \"x\"\npreset = \"elastic.io-us\"\n", 7, "defined twice"),
    ] {
        let error = config(feeds).unwrap_err().to_string();
        assert!(error.starts_with(&format!("t.toml:{line}: ")), "{error}");
        assert!(error.contains(says), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
    }
}
