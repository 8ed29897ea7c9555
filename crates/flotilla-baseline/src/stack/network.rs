//! The network: a VPC over two availability zones with a public and a private subnet in each, an
//! internet gateway for the public side, and one NAT gateway (or one per zone) for the private side.

use serde_json::json;

use super::ids;
use crate::cfn::{Resource, Template, az, get_att, reference, tags};
use crate::options::{BaselineOptions, NatMode, VpcRange};

pub(super) fn add(t: &mut Template, options: &BaselineOptions, vpc: VpcRange) {
    let name = options.name.as_str();
    let label = |what: &str| tags(&[("Name", json!(format!("flotilla-{name}-{what}")))]);

    t.add(
        ids::VPC,
        Resource::new(
            "AWS::EC2::VPC",
            json!({
                "CidrBlock": vpc.cidr(),
                "EnableDnsHostnames": true,
                "EnableDnsSupport": true,
                "Tags": label("vpc"),
            }),
        ),
    );
    t.add(
        ids::INTERNET_GATEWAY,
        Resource::new("AWS::EC2::InternetGateway", json!({ "Tags": label("igw") })),
    );
    t.add(
        ids::GATEWAY_ATTACHMENT,
        Resource::new(
            "AWS::EC2::VPCGatewayAttachment",
            json!({
                "VpcId": reference(ids::VPC),
                "InternetGatewayId": reference(ids::INTERNET_GATEWAY),
            }),
        ),
    );

    // Four equal subnets: public A, public B, private A, private B.
    let cidrs = vpc.subnet_cidrs();
    for zone in 0..2 {
        let letter = ["a", "b"][zone];
        t.add(
            ids::PUBLIC_SUBNETS[zone],
            Resource::new(
                "AWS::EC2::Subnet",
                json!({
                    "VpcId": reference(ids::VPC),
                    "AvailabilityZone": az(zone),
                    "CidrBlock": cidrs[zone],
                    // Only the load balancer and the NAT gateways live here; both get their
                    // addresses explicitly, so nothing needs one assigned on launch.
                    "MapPublicIpOnLaunch": false,
                    "Tags": label(&format!("public-{letter}")),
                }),
            ),
        );
        t.add(
            ids::PRIVATE_SUBNETS[zone],
            Resource::new(
                "AWS::EC2::Subnet",
                json!({
                    "VpcId": reference(ids::VPC),
                    "AvailabilityZone": az(zone),
                    "CidrBlock": cidrs[zone + 2],
                    "MapPublicIpOnLaunch": false,
                    "Tags": label(&format!("private-{letter}")),
                }),
            ),
        );
    }

    t.add(
        ids::PUBLIC_ROUTE_TABLE,
        Resource::new(
            "AWS::EC2::RouteTable",
            json!({ "VpcId": reference(ids::VPC), "Tags": label("public") }),
        ),
    );
    t.add(
        ids::PUBLIC_DEFAULT_ROUTE,
        Resource::new(
            "AWS::EC2::Route",
            json!({
                "RouteTableId": reference(ids::PUBLIC_ROUTE_TABLE),
                "DestinationCidrBlock": "0.0.0.0/0",
                "GatewayId": reference(ids::INTERNET_GATEWAY),
            }),
        )
        .depends_on(&[ids::GATEWAY_ATTACHMENT]),
    );
    for zone in 0..2 {
        t.add(
            ids::PUBLIC_ASSOCIATIONS[zone],
            Resource::new(
                "AWS::EC2::SubnetRouteTableAssociation",
                json!({
                    "SubnetId": reference(ids::PUBLIC_SUBNETS[zone]),
                    "RouteTableId": reference(ids::PUBLIC_ROUTE_TABLE),
                }),
            ),
        );
    }

    let gateways = match options.nat {
        NatMode::Single => 1,
        NatMode::PerAz => 2,
    };
    for zone in 0..gateways {
        let letter = ["a", "b"][zone];
        t.add(
            ids::NAT_EIPS[zone],
            Resource::new(
                "AWS::EC2::EIP",
                json!({ "Domain": "vpc", "Tags": label(&format!("nat-{letter}")) }),
            )
            .depends_on(&[ids::GATEWAY_ATTACHMENT]),
        );
        t.add(
            ids::NAT_GATEWAYS[zone],
            Resource::new(
                "AWS::EC2::NatGateway",
                json!({
                    "AllocationId": get_att(ids::NAT_EIPS[zone], "AllocationId"),
                    "SubnetId": reference(ids::PUBLIC_SUBNETS[zone]),
                    "Tags": label(&format!("nat-{letter}")),
                }),
            ),
        );
    }
    for zone in 0..2 {
        let letter = ["a", "b"][zone];
        // With a single gateway both zones leave through zone A's.
        let gateway = ids::NAT_GATEWAYS[zone.min(gateways - 1)];
        t.add(
            ids::PRIVATE_ROUTE_TABLES[zone],
            Resource::new(
                "AWS::EC2::RouteTable",
                json!({
                    "VpcId": reference(ids::VPC),
                    "Tags": label(&format!("private-{letter}")),
                }),
            ),
        );
        t.add(
            ids::PRIVATE_DEFAULT_ROUTES[zone],
            Resource::new(
                "AWS::EC2::Route",
                json!({
                    "RouteTableId": reference(ids::PRIVATE_ROUTE_TABLES[zone]),
                    "DestinationCidrBlock": "0.0.0.0/0",
                    "NatGatewayId": reference(gateway),
                }),
            ),
        );
        t.add(
            ids::PRIVATE_ASSOCIATIONS[zone],
            Resource::new(
                "AWS::EC2::SubnetRouteTableAssociation",
                json!({
                    "SubnetId": reference(ids::PRIVATE_SUBNETS[zone]),
                    "RouteTableId": reference(ids::PRIVATE_ROUTE_TABLES[zone]),
                }),
            ),
        );
    }
}
