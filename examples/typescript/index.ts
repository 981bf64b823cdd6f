// KumoMTA nodes on AWS from TypeScript, with kumo-infra's component package (@pulumi/kumo is the SDK
// `pulumi package add ../../provider` generates). The other targets are kumo.AzureKumoMta,
// kumo.GcpKumoMta and kumo.SshKumoMta: the same arguments and outputs.
import * as pulumi from "@pulumi/pulumi";
import * as kumo from "@pulumi/kumo";

const config = new pulumi.Config();

const mail = new kumo.AwsKumoMta("mail", {
    // The same shape as kumo:deployment in a kumo-infra stack file, its keys in camelCase.
    deployment: {
        cloud: "aws",
        region: "eu-west-1",
        name: "acme-mail",
        hostname: "mta.acme.example",
        os: "ubuntu22",
        sizing: {
            profile: "performance",
            messagesPerHour: 2000000,
            avgMessageKb: 40,
        },
        spool: {
            holdHours: 8,
        },
        network: {
            // SSH from the operators' network, the HTTP API (TLS, basic auth) from the applications'.
            sshCidrs: ["198.51.100.0/24"],
            apiCidrs: ["10.0.0.0/16"],
        },
        port25: {
            outbound: "relay",
            relay: { host: "smtp.relay.example", port: 587, username: "acme-mail" },
        },
        kumomta: {
            relayCidrs: ["10.0.0.0/16"],
        },
        dkim: {
            domains: ["acme.example", "news.acme.example"],
        },
        lifecycle: {
            protect: true,
        },
    },
    // A secret end to end: `pulumi config set --secret relayPassword ...`.
    relayPassword: config.requireSecret("relayPassword"),
});

export const nodes = mail.nodes;
export const publicIps = mail.publicIps;
export const dnsRecords = mail.dnsRecords;
export const deliverabilityRecords = mail.deliverabilityRecords;
// Where the API listens and where its password is kept (never the password itself).
export const api = mail.api;
